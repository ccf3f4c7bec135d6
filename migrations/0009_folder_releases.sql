-- A folder's finishing operations no longer queue on the row its accepts take turns on.
--
-- Until now one row per folder (folder_quotas.unfinished) was raised by every accept and
-- lowered by every finish, so in a busy folder the worker's finishing statements and the API's
-- accepting ones each waited for the other's commit. The count is now kept in two rows:
--
-- * folder_quotas.accepted counts up as operations are accepted. Only the accepting paths lock
--   it, and they still take turns on it, so calls racing in a folder cannot pass the quota
--   together (service/adapters/postgres/accept.py).
-- * folder_releases.released counts the folder's operations finished or removed. Only the
--   paths that finish or remove an operation lock it (last, after the operations and images
--   they lock; the worker's batch takes several in folder_id order).
--
-- The unfinished count is the difference (the view folder_unfinished). An accept reads the
-- released count without waiting for it: a finish not yet committed is not subtracted yet, so
-- the check can only be stricter for that moment, never looser.

ALTER TABLE folder_quotas RENAME COLUMN unfinished TO accepted;
ALTER TABLE folder_quotas ALTER COLUMN accepted TYPE bigint;

CREATE TABLE folder_releases (
    folder_id  text   PRIMARY KEY,
    released   bigint NOT NULL DEFAULT 0 CHECK (released >= 0)
);

-- Every folder with a count has its release row from its first accept on, so the paths that
-- finish operations only ever update rows that exist, and can lock them in order first.
CREATE FUNCTION add_folder_release() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO folder_releases (folder_id) VALUES (NEW.folder_id) ON CONFLICT DO NOTHING;
    RETURN NULL;
END;
$$;

CREATE TRIGGER folder_quotas_release_row
    AFTER INSERT ON folder_quotas
    FOR EACH ROW
    EXECUTE FUNCTION add_folder_release();

-- No operation is written while the counts change home.
LOCK TABLE operations IN SHARE ROW EXCLUSIVE MODE;

CREATE OR REPLACE FUNCTION count_unfinished_operations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND NOT OLD.done THEN
        INSERT INTO folder_releases (folder_id, released) VALUES (OLD.folder_id, 1)
        ON CONFLICT (folder_id) DO UPDATE SET released = folder_releases.released + 1;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NOT NEW.done THEN
        INSERT INTO folder_quotas (folder_id, accepted) VALUES (NEW.folder_id, 1)
        ON CONFLICT (folder_id) DO UPDATE SET accepted = folder_quotas.accepted + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION forget_unfinished_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM folder_quotas;
    DELETE FROM folder_releases;
    RETURN NULL;
END;
$$;

INSERT INTO folder_releases (folder_id) SELECT folder_id FROM folder_quotas;

CREATE VIEW folder_unfinished AS
SELECT q.folder_id, q.accepted - coalesce(r.released, 0) AS unfinished
FROM folder_quotas q LEFT JOIN folder_releases r USING (folder_id);
