CREATE TABLE "identity_keys" (
	"user_id" uuid NOT NULL,
	"device_id" integer NOT NULL,
	"public_key" "bytea" NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "identity_keys_user_id_device_id_pk" PRIMARY KEY("user_id","device_id")
);
--> statement-breakpoint
CREATE TABLE "kyber_last_resort_keys" (
	"user_id" uuid NOT NULL,
	"device_id" integer NOT NULL,
	"key_id" integer NOT NULL,
	"public_key" "bytea" NOT NULL,
	"signature" "bytea" NOT NULL,
	CONSTRAINT "kyber_last_resort_keys_user_id_device_id_pk" PRIMARY KEY("user_id","device_id")
);
--> statement-breakpoint
CREATE TABLE "one_time_kyber_pre_keys" (
	"user_id" uuid NOT NULL,
	"device_id" integer NOT NULL,
	"key_id" integer NOT NULL,
	"public_key" "bytea" NOT NULL,
	"signature" "bytea" NOT NULL,
	CONSTRAINT "one_time_kyber_pre_keys_user_id_device_id_key_id_pk" PRIMARY KEY("user_id","device_id","key_id")
);
--> statement-breakpoint
CREATE TABLE "one_time_pre_keys" (
	"user_id" uuid NOT NULL,
	"device_id" integer NOT NULL,
	"key_id" integer NOT NULL,
	"public_key" "bytea" NOT NULL,
	CONSTRAINT "one_time_pre_keys_user_id_device_id_key_id_pk" PRIMARY KEY("user_id","device_id","key_id")
);
--> statement-breakpoint
CREATE TABLE "signed_pre_keys" (
	"user_id" uuid NOT NULL,
	"device_id" integer NOT NULL,
	"key_id" integer NOT NULL,
	"public_key" "bytea" NOT NULL,
	"signature" "bytea" NOT NULL,
	CONSTRAINT "signed_pre_keys_user_id_device_id_pk" PRIMARY KEY("user_id","device_id")
);
--> statement-breakpoint
ALTER TABLE "identity_keys" ADD CONSTRAINT "identity_keys_user_id_device_id_devices_user_id_device_id_fk" FOREIGN KEY ("user_id","device_id") REFERENCES "public"."devices"("user_id","device_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "kyber_last_resort_keys" ADD CONSTRAINT "kyber_last_resort_keys_user_id_device_id_devices_user_id_device_id_fk" FOREIGN KEY ("user_id","device_id") REFERENCES "public"."devices"("user_id","device_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "one_time_kyber_pre_keys" ADD CONSTRAINT "one_time_kyber_pre_keys_user_id_device_id_devices_user_id_device_id_fk" FOREIGN KEY ("user_id","device_id") REFERENCES "public"."devices"("user_id","device_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "one_time_pre_keys" ADD CONSTRAINT "one_time_pre_keys_user_id_device_id_devices_user_id_device_id_fk" FOREIGN KEY ("user_id","device_id") REFERENCES "public"."devices"("user_id","device_id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "signed_pre_keys" ADD CONSTRAINT "signed_pre_keys_user_id_device_id_devices_user_id_device_id_fk" FOREIGN KEY ("user_id","device_id") REFERENCES "public"."devices"("user_id","device_id") ON DELETE cascade ON UPDATE no action;