-- Service accounts, their authorized keys, and the IAM tokens exchanged for a JWT signed
-- with one of those keys (IamTokenService.Create).
--
-- A service account acts like a token of the service: one role, in the folders it names
-- ('*' for every folder). Deleting it keeps the row (deleted_at) so that the operations it
-- started still name their creator and its ID is never given to another account.

CREATE TABLE service_accounts (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('viewer', 'editor')),
    folders     text[]      NOT NULL CHECK (cardinality(folders) > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- A name is unique among the accounts not deleted.
CREATE UNIQUE INDEX service_accounts_live_name_idx ON service_accounts (name)
    WHERE deleted_at IS NULL;

-- Only the public key is stored: the private key is shown once, to whoever made the key.
CREATE TABLE service_account_keys (
    id                  text        PRIMARY KEY,
    service_account_id  text        NOT NULL REFERENCES service_accounts (id),
    key_algorithm       text        NOT NULL CHECK (key_algorithm IN ('RSA_2048')),
    public_key          text        NOT NULL,
    description         text        NOT NULL DEFAULT '',
    created_at          timestamptz NOT NULL DEFAULT now(),
    revoked_at          timestamptz
);

CREATE INDEX service_account_keys_account_idx ON service_account_keys (service_account_id);

-- An IAM token is an API token made by the exchange: it names the key it was exchanged with,
-- so revoking the key (or deleting its account) revokes every token made with it, in the
-- same transaction.
ALTER TABLE api_tokens ADD COLUMN key_id text REFERENCES service_account_keys (id);

CREATE INDEX api_tokens_key_idx ON api_tokens (key_id) WHERE key_id IS NOT NULL;

-- Retention removes tokens a day after they expired (an SDK client makes one an hour or so).
CREATE INDEX api_tokens_expires_idx ON api_tokens (expires_at) WHERE expires_at IS NOT NULL;
