CREATE TABLE "envelopes" (
	"seq" bigint GENERATED ALWAYS AS IDENTITY (sequence name "envelopes_seq_seq" INCREMENT BY 1 MINVALUE 1 MAXVALUE 9223372036854775807 START WITH 1 CACHE 1),
	"id" uuid NOT NULL,
	"sender_user" uuid NOT NULL,
	"sender_device" integer NOT NULL,
	"recipient_user" uuid NOT NULL,
	"recipient_device" integer NOT NULL,
	"group_id" uuid,
	"ts" bigint NOT NULL,
	"type" smallint NOT NULL,
	"body" "bytea",
	"state" text NOT NULL,
	CONSTRAINT "envelopes_sender_user_sender_device_id_recipient_user_recipient_device_pk" PRIMARY KEY("sender_user","sender_device","id","recipient_user","recipient_device")
);
--> statement-breakpoint
CREATE TABLE "group_members" (
	"group_id" uuid NOT NULL,
	"user_id" uuid NOT NULL,
	"role" text NOT NULL,
	"added_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "group_members_group_id_user_id_pk" PRIMARY KEY("group_id","user_id")
);
--> statement-breakpoint
CREATE TABLE "groups" (
	"id" uuid PRIMARY KEY DEFAULT gen_random_uuid() NOT NULL,
	"name" text NOT NULL,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
ALTER TABLE "group_members" ADD CONSTRAINT "group_members_group_id_groups_id_fk" FOREIGN KEY ("group_id") REFERENCES "public"."groups"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "group_members" ADD CONSTRAINT "group_members_user_id_accounts_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."accounts"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "envelopes_recipient_idx" ON "envelopes" USING btree ("recipient_user","recipient_device","seq");--> statement-breakpoint
CREATE INDEX "envelopes_sender_idx" ON "envelopes" USING btree ("sender_user");--> statement-breakpoint
CREATE INDEX "envelopes_ts_idx" ON "envelopes" USING btree ("ts");--> statement-breakpoint
CREATE INDEX "group_members_user_idx" ON "group_members" USING btree ("user_id");