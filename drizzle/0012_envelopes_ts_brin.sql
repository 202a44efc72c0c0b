-- Retention's index on envelopes.ts becomes BRIN: the only query on it is retention's daily
-- `ts < cutoff` delete, and rows come in nearly in ts order. A B-tree took one entry per envelope
-- row written (a group send to 10,000 devices writes 10,000 rows on expansion) and one per ack
-- (the ack's UPDATE changes `state`, in envelopes_recipient_idx's predicate, so it is never HOT);
-- a BRIN index takes a summary per 128 pages (docs/BENCHMARKS.md, "Fan-out, stop 26").
-- Building it blocks writes to envelopes until it is built, one scan of the table.
DROP INDEX "envelopes_ts_idx";--> statement-breakpoint
CREATE INDEX "envelopes_ts_idx" ON "envelopes" USING brin ("ts");