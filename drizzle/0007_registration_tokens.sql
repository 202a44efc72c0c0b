CREATE TABLE "registration_tokens" (
	"token" text PRIMARY KEY NOT NULL,
	"uses_allowed" integer,
	"completed" integer DEFAULT 0 NOT NULL,
	"expires_at" timestamp with time zone,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL
);
