DROP INDEX `envelopes_recipient_id_idx`;--> statement-breakpoint
DROP INDEX `envelopes_identity_idx`;--> statement-breakpoint
CREATE UNIQUE INDEX `envelopes_identity_idx` ON `envelopes` (`recipient_user`,`recipient_device`,`id`,`sender_user`,`sender_device`);