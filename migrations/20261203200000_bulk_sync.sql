-- Sync that scales (#5), continued: counts kept per statement rather than per row, and a
-- listing total that costs a few rows to read instead of a count of every listed work.

-- The present-video count is now kept once per statement: a peer page's bulk upsert of
-- two hundred videos updates each of its works once instead of once per video. Row locks
-- on works are still taken here; writers that hold several (peer pages, sweeps) lock
-- their works first, in (title COLLATE "C", year NULLS FIRST) order, so these updates
-- only touch rows they already hold and two scans cannot deadlock on them.
DROP TRIGGER videos_count_present ON videos;
DROP FUNCTION count_present_videos();

CREATE FUNCTION count_present_videos_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE works w SET present_videos = w.present_videos + d.n
    FROM (SELECT work_id, count(*) AS n FROM new_videos
          WHERE removed_at IS NULL GROUP BY work_id) d
    WHERE w.id = d.work_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_present_videos_updated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE works w SET present_videos = w.present_videos + d.n
    FROM (SELECT work_id, sum(n) AS n FROM (
              SELECT work_id, -1 AS n FROM old_videos WHERE removed_at IS NULL
              UNION ALL
              SELECT work_id, 1 FROM new_videos WHERE removed_at IS NULL) changes
          GROUP BY work_id HAVING sum(n) <> 0) d
    WHERE w.id = d.work_id;
    RETURN NULL;
END
$$;

CREATE FUNCTION count_present_videos_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE works w SET present_videos = w.present_videos - d.n
    FROM (SELECT work_id, count(*) AS n FROM old_videos
          WHERE removed_at IS NULL GROUP BY work_id) d
    WHERE w.id = d.work_id;
    RETURN NULL;
END
$$;

CREATE TRIGGER videos_count_present_inserted AFTER INSERT ON videos
    REFERENCING NEW TABLE AS new_videos
    FOR EACH STATEMENT EXECUTE FUNCTION count_present_videos_inserted();
CREATE TRIGGER videos_count_present_updated AFTER UPDATE ON videos
    REFERENCING OLD TABLE AS old_videos NEW TABLE AS new_videos
    FOR EACH STATEMENT EXECUTE FUNCTION count_present_videos_updated();
CREATE TRIGGER videos_count_present_deleted AFTER DELETE ON videos
    REFERENCING OLD TABLE AS old_videos
    FOR EACH STATEMENT EXECUTE FUNCTION count_present_videos_deleted();

-- The number of listed works (those with a present video), as deltas that add up to it.
-- A single counter row would be locked by every writing transaction until it ends, and
-- serialize scans of different locations; inserting a delta row takes no lock anyone
-- waits on. `compact_listed_works()` folds the deltas into one row after each scan.
-- The deltas' highest id and row count also name a state of the listing (its order can
-- change only when a work joins or leaves it: titles never change), which lets the gateway
-- remember where the listing's pages start until it changes.
CREATE TABLE listed_works_deltas (
    id    BIGSERIAL PRIMARY KEY,
    works BIGINT NOT NULL
);
INSERT INTO listed_works_deltas (works) SELECT count(*) FROM works WHERE present_videos > 0;

CREATE FUNCTION count_listed_works() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO delta FROM new_works WHERE present_videos > 0;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT -count(*) INTO delta FROM old_works WHERE present_videos > 0;
    ELSE
        SELECT COALESCE(sum((n.present_videos > 0)::INTEGER - (o.present_videos > 0)::INTEGER), 0)
        INTO delta FROM old_works o JOIN new_works n ON n.id = o.id;
    END IF;
    IF delta <> 0 THEN
        INSERT INTO listed_works_deltas (works) VALUES (delta);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER works_count_listed_inserted AFTER INSERT ON works
    REFERENCING NEW TABLE AS new_works
    FOR EACH STATEMENT EXECUTE FUNCTION count_listed_works();
CREATE TRIGGER works_count_listed_updated AFTER UPDATE ON works
    REFERENCING OLD TABLE AS old_works NEW TABLE AS new_works
    FOR EACH STATEMENT EXECUTE FUNCTION count_listed_works();
CREATE TRIGGER works_count_listed_deleted AFTER DELETE ON works
    REFERENCING OLD TABLE AS old_works
    FOR EACH STATEMENT EXECUTE FUNCTION count_listed_works();

-- TRUNCATE fires no row or transition triggers: start the total again from nothing.
CREATE FUNCTION reset_listed_works() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM listed_works_deltas;
    RETURN NULL;
END
$$;

CREATE TRIGGER works_reset_listed AFTER TRUNCATE ON works
    FOR EACH STATEMENT EXECUTE FUNCTION reset_listed_works();

-- Folds the deltas committed so far into one row. Rows being written by open transactions
-- are invisible here and stay as they are; a concurrent call skips rows this one deleted
-- (DELETE ... RETURNING yields only rows it removed itself), so the sum is never lost or
-- counted twice. The advisory lock only spares the two calls waiting on each other.
CREATE FUNCTION compact_listed_works() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF pg_try_advisory_xact_lock(hashtext('listed_works_deltas')) THEN
        WITH folded AS (DELETE FROM listed_works_deltas RETURNING works)
        INSERT INTO listed_works_deltas (works)
        SELECT sum(works) FROM folded HAVING count(*) > 0;
    END IF;
END
$$;
