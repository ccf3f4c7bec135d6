-- Updates applied and finished in one statement: what worker.py's transaction does with
-- ImageChange.apply and Image.snapshot, for many at once. The operation rows are locked
-- first (as the transaction locks them), then the images, then the folders' release rows (which
-- finishing raises: the trigger of migrations 0007 and 0009), each in one order so that concurrent
-- batches and the other paths wait for each other and never deadlock; the revision is
-- counted. The property test
-- tests/integration/test_rules_agree.py holds the two paths to the same result.
--
-- $1 operation IDs, $2 READY, $3 UPDATING.
WITH operation AS (
    SELECT id, image_id, folder_id, request FROM operations
    WHERE id = ANY($1::text[]) AND kind = 'update_image' AND NOT done
      -- A request of another shape than the API writes is left to the worker's code.
      AND jsonb_typeof(coalesce(request->'name', '""')) = 'string'
      AND jsonb_typeof(coalesce(request->'description', '""')) = 'string'
      AND jsonb_typeof(coalesce(request->'labels', '{}')) = 'object'
      AND NOT EXISTS (SELECT 1 FROM jsonb_each(coalesce(request->'labels', '{}'))
                      WHERE jsonb_typeof(value) <> 'string')
    ORDER BY id
    FOR UPDATE
), locked AS (
    -- FOR UPDATE, as the transaction's lock_image takes it.
    SELECT id FROM images WHERE id IN (SELECT image_id FROM operation)
    ORDER BY id
    FOR UPDATE
), quota AS (
    -- After the images (all of them: the sort needs every one before it locks the first).
    SELECT folder_id FROM folder_releases
    WHERE folder_id IN (SELECT folder_id FROM operation
                        WHERE image_id IN (SELECT id FROM locked))
    ORDER BY folder_id
    FOR UPDATE
), applied AS (
    UPDATE images SET
        name = coalesce(operation.request->>'name', images.name),
        description = coalesce(operation.request->>'description', images.description),
        labels = coalesce(operation.request->'labels', images.labels),
        status = $2,
        revision = images.revision + 1
    FROM operation
    WHERE images.id = operation.image_id AND images.id IN (SELECT id FROM locked)
      AND operation.folder_id IN (SELECT folder_id FROM quota)
      AND images.status = $3
    RETURNING operation.id AS operation_id, images.id, images.folder_id, images.name,
              images.description, images.checksum, images.status, images.created_at,
              images.labels
)
UPDATE operations SET done = true, modified_at = now(), lease_until = NULL,
    response = jsonb_build_object(
        'id', applied.id, 'folder_id', applied.folder_id, 'name', applied.name,
        'description', applied.description, 'checksum', applied.checksum,
        'status', applied.status,
        'created_at', to_char(applied.created_at AT TIME ZONE 'UTC',
                              'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"'),
        'labels', applied.labels)
FROM applied
WHERE operations.id = applied.operation_id
-- The seconds since acceptance are for the metrics (worker.py).
RETURNING operations.id,
          extract(epoch FROM operations.modified_at - operations.created_at)::float8 AS seconds
