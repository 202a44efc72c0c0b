-- The envelope identity's primary key now leads with the recipient device and id, so it also
-- serves what envelopes_recipient_id_idx served (acks and `queued` marks by recipient device and
-- id, device erasure, the recipient half of export and user erasure): one index entry fewer per
-- envelope row inserted and per ack (docs/BENCHMARKS.md, "Fewer index entries per 1:1 message").
-- The key's columns, and so what counts as a re-sent envelope, are unchanged. Building the new
-- key blocks writes to envelopes until it is built: on a large table the first node of the new
-- version starts that much later (the others wait for the migration lock).
DROP INDEX "envelopes_recipient_id_idx";--> statement-breakpoint
ALTER TABLE "envelopes" DROP CONSTRAINT "envelopes_sender_user_sender_device_id_recipient_user_recipient_device_pk";--> statement-breakpoint
ALTER TABLE "envelopes" ADD CONSTRAINT "envelopes_recipient_user_recipient_device_id_sender_user_sender_device_pk" PRIMARY KEY("recipient_user","recipient_device","id","sender_user","sender_device");