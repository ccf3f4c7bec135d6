-- An operation ended because its message reached the dead-letter queue says so in a column of
-- its own, instead of in the words of its error message. `ops dead-letters` used to find these
-- operations with a LIKE on error_message, so the message text was a contract between the
-- worker and the operator's query; rewording one silently broke the other.
--
-- Why `dead_lettered_at timestamptz` (NULL: not dead-lettered) rather than an `ended_by` text
-- with a CHECK over every way an operation can end:
--
-- * Only one path sets it (usecases/execute.Executor.end_dead_lettered, through the
--   finishing transaction). An `ended_by` would have to be written correctly by every path
--   that finishes an operation (the worker's transaction, the one-statement Update of
--   apply_updates.sql, Cancel, the Create's own give-up, retention never), and a backfill
--   would have to guess the ending of every existing row; nothing reads those other values.
-- * The time is what the operator's query filters and orders on ("dead-lettered in the last
--   hour, newest first"): the partial index below holds only dead-lettered rows, so the query
--   reads them and nothing else, where the LIKE scanned every operation finished in the window.
-- * Adding a nullable column without a default rewrites nothing.
--
-- The CHECK keeps it to what it means: set only on a finished operation that failed.
--
-- The finished-operation notification (migration 0006, rows.OPERATION_COLUMNS) does not carry
-- it: the public Operation has no such field, and the payload lists its columns by name.
--
-- Backfill: rows finished before this migration by a dead letter carry the worker's message,
-- "Operation failed after <N> delivery attempts" (a Create that ran out of claims says
-- "... after <N> attempts", without "delivery", and is not a dead letter). They are done
-- already, so the update fires neither the count triggers (0007, 0009: `done` does not
-- change) nor the notification (0004: only when `done` becomes true).

ALTER TABLE operations ADD COLUMN dead_lettered_at timestamptz
    CONSTRAINT operations_dead_lettered_failed
    CHECK (dead_lettered_at IS NULL OR (done AND error_code IS NOT NULL));

UPDATE operations SET dead_lettered_at = modified_at
WHERE done AND error_code IS NOT NULL
  AND error_message LIKE 'Operation failed after % delivery attempts';

CREATE INDEX operations_dead_lettered_idx ON operations (dead_lettered_at)
    WHERE dead_lettered_at IS NOT NULL;
