-- Changes to works and videos are announced on `velour_hot_rows` too (payload: the table's
-- name), so that gateways can keep what they derive from the listing (its total, its sync
-- cursor, its page boundaries) until the catalog changes. Statement triggers: a scan's
-- page of a hundred rows announces once, and Postgres folds identical notifications of one
-- transaction into one.
CREATE TRIGGER works_announce
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON works
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_change();
CREATE TRIGGER videos_announce
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON videos
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_change();
