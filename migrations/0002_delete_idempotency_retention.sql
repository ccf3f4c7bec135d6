-- Delete operations, idempotency keys, and indexes for listing and retention.

ALTER TABLE operations DROP CONSTRAINT operations_kind_check;
ALTER TABLE operations ADD CONSTRAINT operations_kind_check
    CHECK (kind IN ('create_image', 'update_image', 'delete_image'));

-- List ordered by createdAt (name order uses images_folder_name_key, id order the first index).
CREATE INDEX images_folder_created_idx ON images (folder_id, created_at, id);

-- Retention removes finished operations by age.
CREATE INDEX operations_finished_idx ON operations (modified_at) WHERE done;

-- The first call with a key records the operation it started; a retry with the same key from
-- the same caller gets that operation back. The primary key makes racing calls wait for the
-- first one's transaction, then see its row.
CREATE TABLE idempotency_keys (
    caller       text        NOT NULL,
    key          text        NOT NULL,
    fingerprint  text        NOT NULL,
    operation_id text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (caller, key)
);

CREATE INDEX idempotency_keys_created_idx ON idempotency_keys (created_at);
