CREATE TABLE `envelopes` (
	`seq` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`id` text NOT NULL,
	`sender_user` text NOT NULL,
	`sender_device` integer NOT NULL,
	`recipient_user` text NOT NULL,
	`recipient_device` integer NOT NULL,
	`group_id` text,
	`ts` integer NOT NULL,
	`type` integer NOT NULL,
	`body` blob,
	`state` text NOT NULL
);
--> statement-breakpoint
CREATE UNIQUE INDEX `envelopes_identity_idx` ON `envelopes` (`sender_user`,`sender_device`,`id`,`recipient_user`,`recipient_device`);--> statement-breakpoint
CREATE INDEX `envelopes_recipient_idx` ON `envelopes` (`recipient_user`,`recipient_device`,`seq`) WHERE "envelopes"."state" <> 'acked';--> statement-breakpoint
CREATE INDEX `envelopes_recipient_id_idx` ON `envelopes` (`recipient_user`,`recipient_device`,`id`);--> statement-breakpoint
CREATE INDEX `envelopes_sender_idx` ON `envelopes` (`sender_user`);--> statement-breakpoint
CREATE INDEX `envelopes_ts_idx` ON `envelopes` (`ts`);