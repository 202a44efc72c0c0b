DROP INDEX "envelopes_recipient_idx";--> statement-breakpoint
CREATE INDEX "envelopes_recipient_id_idx" ON "envelopes" USING btree ("recipient_user","recipient_device","id");--> statement-breakpoint
CREATE INDEX "envelopes_recipient_idx" ON "envelopes" USING btree ("recipient_user","recipient_device","seq") WHERE "envelopes"."state" <> 'acked';