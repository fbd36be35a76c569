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

-- A trigger with a transition table serves one event, so each table gets one per event:
-- <table>_announce_insert, _update and _delete, and _truncate (which has no rows to show).
DO $$
DECLARE
    tbl TEXT;
    event TEXT;
BEGIN
    FOREACH tbl IN ARRAY ARRAY['works', 'videos'] LOOP
        FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format(
                'CREATE TRIGGER %I AFTER %s ON %I REFERENCING %s TABLE AS changed_rows
                 FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_changed_rows()',
                tbl || '_announce_' || event, upper(event), tbl,
                CASE event WHEN 'delete' THEN 'OLD' ELSE 'NEW' END);
        END LOOP;
        EXECUTE format(
            'CREATE TRIGGER %I AFTER TRUNCATE ON %I
             FOR EACH STATEMENT EXECUTE FUNCTION velour_announce_change()',
            tbl || '_announce_truncate', tbl);
    END LOOP;
END
$$;
