ALTER TABLE "groups" ADD COLUMN "members_version" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
-- Who a group send reaches is read from group_members, devices and blocks (the members, their
-- devices, the members who block the sender). Every statement that changes one of those bumps the
-- version of each group concerned, in its own transaction, so a group actor that cached the
-- members at version N sees N + 1 on its next send and reads them again (docs/MESSAGING.md,
-- "The member directory cache"). Statement-level triggers with transition tables: a group of
-- 10,000 created in one INSERT bumps once, not 10,000 times. The groups rows are locked in id
-- order first, so two statements bumping overlapping groups cannot deadlock.
CREATE FUNCTION bump_group_versions_by_group() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM groups WHERE id IN (SELECT group_id FROM changed) ORDER BY id FOR NO KEY UPDATE;
  UPDATE groups SET members_version = members_version + 1 WHERE id IN (SELECT group_id FROM changed);
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE FUNCTION bump_group_versions_by_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM 1 FROM groups
    WHERE id IN (SELECT m.group_id FROM group_members m WHERE m.user_id IN (SELECT user_id FROM changed))
    ORDER BY id FOR NO KEY UPDATE;
  UPDATE groups SET members_version = members_version + 1
    WHERE id IN (SELECT m.group_id FROM group_members m WHERE m.user_id IN (SELECT user_id FROM changed));
  RETURN NULL;
END;
$$;
--> statement-breakpoint
CREATE TRIGGER group_members_added AFTER INSERT ON group_members REFERENCING NEW TABLE AS changed
  FOR EACH STATEMENT EXECUTE FUNCTION bump_group_versions_by_group();
--> statement-breakpoint
CREATE TRIGGER group_members_removed AFTER DELETE ON group_members REFERENCING OLD TABLE AS changed
  FOR EACH STATEMENT EXECUTE FUNCTION bump_group_versions_by_group();
--> statement-breakpoint
CREATE TRIGGER devices_added AFTER INSERT ON devices REFERENCING NEW TABLE AS changed
  FOR EACH STATEMENT EXECUTE FUNCTION bump_group_versions_by_user();
--> statement-breakpoint
CREATE TRIGGER devices_removed AFTER DELETE ON devices REFERENCING OLD TABLE AS changed
  FOR EACH STATEMENT EXECUTE FUNCTION bump_group_versions_by_user();
--> statement-breakpoint
CREATE TRIGGER blocks_added AFTER INSERT ON blocks REFERENCING NEW TABLE AS changed
  FOR EACH STATEMENT EXECUTE FUNCTION bump_group_versions_by_user();
--> statement-breakpoint
CREATE TRIGGER blocks_removed AFTER DELETE ON blocks REFERENCING OLD TABLE AS changed
  FOR EACH STATEMENT EXECUTE FUNCTION bump_group_versions_by_user();
