-- pgbench script for docs/BENCHMARKS.md, "Fewer index entries per 1:1 message": one 1:1 group commit's
-- envelope INSERT (80 rows for random recipients, shaped as PostgresEnvelopeLog.insert) and the ack of
-- those rows (the UPDATE … FROM join of PostgresEnvelopeLog.ackBatch), each autocommitted. Run against a
-- database migrated with drizzle/ whose envelopes table is already filled:
--   pgbench -n -c 2 -j 1 -T 30 -f scripts/envelope-pgbench.sql <database>
-- and read per-row costs from pg_stat_statements.
\set r random(1, 1000000000000)
\set ru random(0, 1999)
insert into envelopes (id, sender_user, sender_device, recipient_user, recipient_device, group_id, ts, type, body, state)
select md5(:r || '-' || g)::uuid, ('00000000-0000-4000-8000-' || lpad(((:ru + g * 7) % 2000)::text, 12, '0'))::uuid, 1,
  ('00000000-0000-4000-8000-' || lpad(((:ru + g) % 2000)::text, 12, '0'))::uuid, 1, null,
  (extract(epoch from clock_timestamp()) * 1000)::bigint, 1, decode(repeat('ab', 150), 'hex'), 'pending'
from generate_series(1, 80) g
on conflict do nothing
returning id, sender_user, sender_device, recipient_user, recipient_device;
update envelopes as e set state = 'acked', body = null
from (select ('00000000-0000-4000-8000-' || lpad(((:ru + g) % 2000)::text, 12, '0'))::uuid recipient_user, 1 recipient_device, md5(:r || '-' || g)::uuid id from generate_series(1, 80) g) as a
where e.recipient_user = a.recipient_user and e.recipient_device = a.recipient_device and e.id = a.id and e.body is not null
returning e.recipient_user, e.recipient_device, e.id;
