CREATE TABLE "handed_out_pre_keys" (
	"user_id" uuid NOT NULL,
	"device_id" integer NOT NULL,
	"kind" text NOT NULL,
	"key_id" integer NOT NULL,
	"public_key_sha256" "bytea" NOT NULL,
	CONSTRAINT "handed_out_pre_keys_user_id_device_id_kind_key_id_pk" PRIMARY KEY("user_id","device_id","kind","key_id")
);
--> statement-breakpoint
ALTER TABLE "handed_out_pre_keys" ADD CONSTRAINT "handed_out_pre_keys_user_id_device_id_devices_user_id_device_id_fk" FOREIGN KEY ("user_id","device_id") REFERENCES "public"."devices"("user_id","device_id") ON DELETE cascade ON UPDATE no action;