CREATE TABLE `group_messages` (
	`seq` integer PRIMARY KEY AUTOINCREMENT NOT NULL,
	`id` text NOT NULL,
	`sender_user` text NOT NULL,
	`sender_device` integer NOT NULL,
	`group_id` text NOT NULL,
	`ts` integer NOT NULL,
	`type` integer NOT NULL,
	`body` blob,
	`recipients` text
);
--> statement-breakpoint
CREATE UNIQUE INDEX `group_messages_identity_idx` ON `group_messages` (`sender_user`,`sender_device`,`id`);--> statement-breakpoint
CREATE INDEX `group_messages_unexpanded_idx` ON `group_messages` (`seq`) WHERE "group_messages"."recipients" is not null;--> statement-breakpoint
CREATE INDEX `group_messages_ts_idx` ON `group_messages` (`ts`);