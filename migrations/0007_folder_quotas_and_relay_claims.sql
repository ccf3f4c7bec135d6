-- 1. Each folder's count of unfinished operations, in a row of its own: the quota check is one
-- primary-key read, and locking the row serializes the accepts of one folder, so calls racing
-- in a folder cannot pass the quota together (service/adapters/postgres/accept.py).
--
-- The count has one home: the trigger below, which moves it in the transaction that inserts,
-- finishes or removes an operation, whichever path does it (accept, worker, Cancel, dead
-- letter, retention). Every path takes the quota rows last, after the operations and images it
-- locks, and several of them ordered by folder_id, so the rows add no deadlock.

CREATE TABLE folder_quotas (
    folder_id   text    PRIMARY KEY,
    unfinished  integer NOT NULL CHECK (unfinished >= 0)
);

CREATE FUNCTION count_unfinished_operations() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND NOT OLD.done THEN
        UPDATE folder_quotas SET unfinished = unfinished - 1 WHERE folder_id = OLD.folder_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NOT NEW.done THEN
        INSERT INTO folder_quotas (folder_id, unfinished) VALUES (NEW.folder_id, 1)
        ON CONFLICT (folder_id) DO UPDATE SET unfinished = folder_quotas.unfinished + 1;
    END IF;
    RETURN NULL;
END;
$$;

CREATE FUNCTION forget_unfinished_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM folder_quotas;
    RETURN NULL;
END;
$$;

-- No operation is written while the triggers are created and the counts taken.
LOCK TABLE operations IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER operations_count_inserted
    AFTER INSERT ON operations
    FOR EACH ROW WHEN (NOT NEW.done)
    EXECUTE FUNCTION count_unfinished_operations();

CREATE TRIGGER operations_count_changed
    AFTER UPDATE OF done, folder_id ON operations
    FOR EACH ROW WHEN (OLD.done IS DISTINCT FROM NEW.done
                       OR (NOT NEW.done AND OLD.folder_id IS DISTINCT FROM NEW.folder_id))
    EXECUTE FUNCTION count_unfinished_operations();

CREATE TRIGGER operations_count_deleted
    AFTER DELETE ON operations
    FOR EACH ROW WHEN (NOT OLD.done)
    EXECUTE FUNCTION count_unfinished_operations();

CREATE TRIGGER operations_count_truncated
    AFTER TRUNCATE ON operations
    FOR EACH STATEMENT
    EXECUTE FUNCTION forget_unfinished_counts();

INSERT INTO folder_quotas (folder_id, unfinished)
SELECT folder_id, count(*) FROM operations WHERE NOT done GROUP BY folder_id;

-- 2. The outbox relay claims the unpublished operations it is about to send, for a short
-- while, in a statement of its own, and sends them outside any transaction: a slow broker
-- holds no row lock (service/adapters/postgres/outbox.py). Another relay skips what is
-- claimed until the claim runs out.

ALTER TABLE operations ADD COLUMN relay_claimed_until timestamptz;
