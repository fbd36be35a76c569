-- Every change to storage locations, which the stream services keep in memory between
-- requests, is announced on the channel `velour_hot_rows` with the table's name as payload.
-- Each stream service listens and forgets what it kept (velour-db `hot`). Postgres sends
-- one notification per distinct payload per transaction, when it commits. A row trigger,
-- so that a statement changing no row (a scheduler's claim finding nothing due) announces
-- nothing.
CREATE FUNCTION velour_announce_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('velour_hot_rows', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER storage_locations_announce
    AFTER INSERT OR UPDATE OR DELETE ON storage_locations
    FOR EACH ROW EXECUTE FUNCTION velour_announce_change();
CREATE TRIGGER storage_locations_announce_truncate
    AFTER TRUNCATE ON storage_locations
    FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_change();
