-- Group commit: what accept.py's single-Update transaction does (rules.ensure_updatable,
-- the caller's folders, rules.ensure_within_quota, the name free in the folder), for many
-- Updates at once (one array element per Update) in one statement. The conditions are checked
-- per row, so a batch accepts exactly the Updates that would be accepted one at a time; the
-- property test tests/integration/test_rules_agree.py holds the two to that.
--
-- $1 image IDs, $2 operation IDs, $3 new names (NULL: unchanged), $4 callers, $5 requests,
-- $6 the caller's folders (NULL: all), $7 the quota, $8 the description,
-- $9 UPDATING, $10 READY.
WITH requested AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
        AS r(image_id, operation_id, name, created_by, request)
), locked AS (
    -- Rows locked in one order, so batches sharing images wait for each other, never deadlock.
    SELECT id FROM images WHERE id IN (SELECT image_id FROM requested)
    ORDER BY id
    FOR NO KEY UPDATE
), image AS (
    UPDATE images SET status = $9
    FROM requested
    WHERE images.id = requested.image_id AND images.id IN (SELECT id FROM locked)
      AND images.status = $10
      AND ($6::text[] IS NULL OR images.folder_id = ANY($6))
      AND (requested.name IS NULL OR NOT EXISTS (
          SELECT 1 FROM images other
          WHERE other.folder_id = images.folder_id AND other.name = requested.name
            AND other.id <> images.id))
      AND (SELECT count(*) FROM operations
           WHERE operations.folder_id = images.folder_id AND NOT done) < $7
    RETURNING images.folder_id, requested.*
)
INSERT INTO operations (id, kind, image_id, folder_id, description, created_at, created_by,
                        modified_at, request)
SELECT operation_id, 'update_image', image_id, folder_id, $8, clock_timestamp(), created_by,
       clock_timestamp(), request
FROM image
RETURNING id, folder_id, created_at
