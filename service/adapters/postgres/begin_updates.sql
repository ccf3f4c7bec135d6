-- Group commit: what accept.py's single-Update transaction does (rules.ensure_updatable,
-- the caller's folders, rules.ensure_within_quota, the name free in the folder, the
-- idempotency key), for many Updates at once (one array element per Update) in one statement:
-- all of them or, should it fail, none. The conditions are checked per row, in the batch's
-- order, so a batch accepts exactly the Updates that would be accepted one at a time in that
-- order; the property test tests/integration/test_rules_agree.py holds the two to that.
--
-- $1 image IDs, $2 operation IDs, $3 new names (NULL: unchanged), $4 callers, $5 requests,
-- $6 each caller's folders (a JSON array as text; NULL: all), $7 the quota, $8 the description,
-- $9 UPDATING, $10 READY, $11 the calls' trace contexts (NULL: none has one), $12 $13 $14 the
-- idempotency keys' callers, keys and fingerprints (NULL where an Update has none; NULL
-- arrays: none has one).
--
-- Keys: each key's lock (accept.py's _CLAIM_KEY, the first lock every keyed path takes) is
-- taken before any row, in one order. An Update joins only with a key not recorded and not
-- carried by an earlier Update of the batch, and its key is recorded with its operation, so
-- an Update the batch does not accept leaves no key behind. A key recorded by a transaction
-- that committed after this statement's snapshot was taken (while it waited for the key's
-- lock) makes the statement fail on the key's unique index: the batch is handed back whole.
WITH requested AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                         $6::text[], $11::text[], $12::text[], $13::text[], $14::text[])
        WITH ORDINALITY
        AS r(image_id, operation_id, name, created_by, request, folders, trace_context,
             key_caller, key, fingerprint, n)
), key_locks AS (
    -- Taken by sorted lock number, so batches sharing keys wait for each other, never deadlock.
    SELECT count(pg_advisory_xact_lock(lock)) AS taken FROM (
        SELECT DISTINCT idempotency_key_lock(key_caller, key) AS lock
        FROM requested WHERE key IS NOT NULL
        ORDER BY 1 OFFSET 0
    ) keys
), fresh AS (
    -- Read once every key's lock is held (the uncorrelated subquery runs first, and whole).
    -- The recorded key is looked up as a scalar, one primary-key probe per Update: as NOT
    -- EXISTS under OR the planner may hash the whole table of keys instead.
    SELECT * FROM requested r
    WHERE (SELECT taken FROM key_locks) IS NOT NULL
      AND (r.key IS NULL OR (
          (SELECT k.operation_id FROM idempotency_keys k
           WHERE k.caller = r.key_caller AND k.key = r.key) IS NULL
          AND NOT EXISTS (SELECT 1 FROM requested e
                          WHERE e.key_caller = r.key_caller AND e.key = r.key AND e.n < r.n)))
), locked AS (
    -- Rows locked in one order, so batches sharing images wait for each other, never deadlock.
    SELECT id, folder_id, status FROM images WHERE id IN (SELECT image_id FROM fresh)
    ORDER BY id
    FOR NO KEY UPDATE
), startable AS (
    -- Everything but the quota: READY, in the caller's folders, the new name free in the
    -- folder. Of several Updates of one image, the first: it leaves the image UPDATING.
    SELECT DISTINCT ON (locked.id) fresh.*, locked.folder_id
    FROM fresh JOIN locked ON locked.id = fresh.image_id
    WHERE locked.status = $10
      AND (fresh.folders IS NULL OR fresh.folders::jsonb ? locked.folder_id)
      AND (fresh.name IS NULL OR NOT EXISTS (
          SELECT 1 FROM images other
          WHERE other.folder_id = locked.folder_id AND other.name = fresh.name
            AND other.id <> locked.id))
    ORDER BY locked.id, fresh.n
), quota AS (
    -- The folders' counts, their rows of accepts locked after the images and in one order (as
    -- accept.py locks one), so racing accepts of a folder take turns; less what was finished
    -- (migration 0009), read without waiting for the paths that finish operations. A copy of
    -- the view folder_unfinished, kept because a CTE reading the view would see folder_quotas
    -- as of this statement's snapshot, not as locked here (accept.py's _LOCK_QUOTA says more);
    -- tests/integration/test_folder_quota.py's property test holds the copies together.
    INSERT INTO folder_quotas (folder_id, accepted)
    SELECT DISTINCT folder_id, 0 FROM startable ORDER BY folder_id
    ON CONFLICT (folder_id) DO UPDATE SET accepted = folder_quotas.accepted
    RETURNING folder_id, accepted - coalesce(
        (SELECT released FROM folder_releases
         WHERE folder_releases.folder_id = folder_quotas.folder_id), 0) AS unfinished
), accepted AS (
    -- In the batch's order, each Update of a folder counts the ones accepted before it.
    SELECT startable.* FROM (
        SELECT startable.*, quota.unfinished,
               row_number() OVER (PARTITION BY startable.folder_id ORDER BY startable.n) AS nth
        FROM startable JOIN quota USING (folder_id)
    ) startable
    WHERE unfinished + nth <= $7
), image AS (
    UPDATE images SET status = $9
    FROM accepted
    WHERE images.id = accepted.image_id
    RETURNING accepted.*
), keys AS (
    -- No ON CONFLICT: a key recorded meanwhile fails the statement (the header says why).
    INSERT INTO idempotency_keys (caller, key, fingerprint, operation_id)
    SELECT key_caller, key, fingerprint, operation_id FROM image WHERE key IS NOT NULL
)
-- The trigger of migration 0007 adds each inserted operation to its folder's count. One
-- reading of the clock per operation, for both its times: the caller is answered with them.
INSERT INTO operations (id, kind, image_id, folder_id, description, created_at, created_by,
                        modified_at, request, trace_context)
SELECT operation_id, 'update_image', image_id, folder_id, $8, at, created_by,
       at, request, trace_context
FROM image CROSS JOIN LATERAL (SELECT clock_timestamp() AS at) clock
RETURNING id, folder_id, created_at
