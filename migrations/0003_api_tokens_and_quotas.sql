-- API tokens (stored as SHA-256 hashes of their secrets) and what quotas need.

CREATE TABLE api_tokens (
    id          text        PRIMARY KEY,
    subject     text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('viewer', 'editor')),
    -- Folders the token may act in; '*' stands for every folder.
    folders     text[]      NOT NULL CHECK (cardinality(folders) > 0),
    secret_hash bytea       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);

-- The per-folder limit on unfinished operations counts these.
CREATE INDEX operations_unfinished_folder_idx ON operations (folder_id) WHERE NOT done;
