-- Changes to works and videos are announced on `velour_hot_rows` too (payload: the table's
-- name), so that gateways can keep what they derive from the listing (its total, its sync
-- cursor) until the catalog changes. Statement triggers that look at the rows the
-- statement changed: a scan's page of a hundred rows announces once, a statement that
-- changed nothing (a sweep finding nothing gone) announces nothing, and Postgres folds
-- identical notifications of one transaction into one.
CREATE FUNCTION velour_announce_changed_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM changed_rows) THEN
        PERFORM pg_notify('velour_hot_rows', TG_TABLE_NAME);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER works_announce_insert AFTER INSERT ON works
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_changed_rows();
CREATE TRIGGER works_announce_update AFTER UPDATE ON works
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_changed_rows();
CREATE TRIGGER works_announce_delete AFTER DELETE ON works
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_changed_rows();
CREATE TRIGGER works_announce_truncate AFTER TRUNCATE ON works
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_change();

CREATE TRIGGER videos_announce_insert AFTER INSERT ON videos
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_changed_rows();
CREATE TRIGGER videos_announce_update AFTER UPDATE ON videos
    REFERENCING NEW TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_changed_rows();
CREATE TRIGGER videos_announce_delete AFTER DELETE ON videos
    REFERENCING OLD TABLE AS changed_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_changed_rows();
CREATE TRIGGER videos_announce_truncate AFTER TRUNCATE ON videos
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_change();

