CREATE TABLE "group_messages" (
	"seq" bigint GENERATED ALWAYS AS IDENTITY (sequence name "group_messages_seq_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"id" uuid NOT NULL,
	"sender_user" uuid NOT NULL,
	"sender_device" integer NOT NULL,
	"group_id" uuid NOT NULL,
	"ts" bigint NOT NULL,
	"type" smallint NOT NULL,
	"body" "bytea",
	"recipients" jsonb,
	CONSTRAINT "group_messages_sender_user_sender_device_id_pk" PRIMARY KEY("sender_user","sender_device","id")
);
--> statement-breakpoint
CREATE INDEX "group_messages_unexpanded_idx" ON "group_messages" USING btree ("seq") WHERE "group_messages"."recipients" is not null;--> statement-breakpoint
CREATE INDEX "group_messages_unexpanded_id_idx" ON "group_messages" USING btree ("id") WHERE "group_messages"."recipients" is not null;--> statement-breakpoint
CREATE INDEX "group_messages_ts_idx" ON "group_messages" USING btree ("ts");