-- The audit log is append-only: the database itself refuses UPDATE, DELETE and TRUNCATE.
-- The one exception is retention: a transaction that sets clearbox.audit_prune = 'on' (SET LOCAL)
-- may delete rows, and only rows older than the cut-off it names in clearbox.audit_prune_before.
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE'
     AND current_setting('clearbox.audit_prune', true) = 'on'
     AND OLD.at < current_setting('clearbox.audit_prune_before', true)::timestamptz THEN
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'audit_log is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
--> statement-breakpoint
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
  FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
--> statement-breakpoint
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
  FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
