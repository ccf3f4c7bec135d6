-- Images and their operations. The operations table is also the outbox: a row whose
-- published_at is NULL has not been confirmed by the broker yet.

CREATE TABLE images (
    id          text        PRIMARY KEY,
    folder_id   text        NOT NULL,
    name        text        NOT NULL,
    description text        NOT NULL DEFAULT '',
    checksum    text        NOT NULL DEFAULT '',
    -- Image.Status numbers: 1 CREATING, 2 READY, 3 ERROR, 4 DELETING, 5 UPDATING
    status      smallint    NOT NULL CHECK (status BETWEEN 1 AND 5),
    labels      jsonb       NOT NULL DEFAULT '{}',
    uri         text        NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- Counts the changes applied to the image (Create's checksum, each Update): an operation
    -- applied twice would show here.
    revision    bigint      NOT NULL DEFAULT 0,
    CONSTRAINT images_folder_name_key UNIQUE (folder_id, name)
);

CREATE INDEX images_folder_id_idx ON images (folder_id, id);

CREATE TABLE operations (
    id              text        PRIMARY KEY,
    kind            text        NOT NULL CHECK (kind IN ('create_image', 'update_image')),
    -- No foreign key: an image's operations stay readable after the image is gone.
    image_id        text        NOT NULL,
    folder_id       text        NOT NULL,
    description     text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text        NOT NULL DEFAULT '',
    modified_at     timestamptz NOT NULL DEFAULT now(),
    done            boolean     NOT NULL DEFAULT false,
    -- What was asked: the change of an Update, the source of a Create.
    request         jsonb       NOT NULL,
    -- Set when done: the Image snapshot, or the error status.
    response        jsonb,
    error_code      integer,
    error_message   text,
    -- Outbox and leases.
    published_at    timestamptz,
    attempts        integer     NOT NULL DEFAULT 0,
    lease_until     timestamptz,
    CONSTRAINT operations_result_check CHECK (
        (NOT done AND response IS NULL AND error_code IS NULL)
        OR (done AND (response IS NULL) <> (error_code IS NULL))
    )
);

CREATE INDEX operations_image_id_idx ON operations (image_id, created_at DESC, id DESC);
CREATE INDEX operations_unpublished_idx ON operations (created_at)
    WHERE published_at IS NULL AND NOT done;
CREATE INDEX operations_unfinished_idx ON operations (modified_at) WHERE NOT done;
