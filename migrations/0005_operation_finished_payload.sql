-- Tell listeners the finished operation itself, not only its ID: each API process keeps it and
-- answers Get and WaitOperation from memory instead of reading it back. A notification must be
-- shorter than 8000 bytes, so a larger operation is announced by its ID alone (and read).
-- `operation_done` (the ID) is still sent for API processes started before this migration.

CREATE OR REPLACE FUNCTION notify_operation_done() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    finished text;
BEGIN
    PERFORM pg_notify('operation_done', NEW.id);
    finished := json_build_object(
        'id', NEW.id, 'kind', NEW.kind, 'image_id', NEW.image_id, 'folder_id', NEW.folder_id,
        'description', NEW.description, 'created_at', NEW.created_at,
        'created_by', NEW.created_by, 'modified_at', NEW.modified_at, 'done', NEW.done,
        'response', NEW.response, 'error_code', NEW.error_code,
        'error_message', NEW.error_message)::text;
    IF octet_length(finished) >= 8000 THEN
        finished := NEW.id;
    END IF;
    PERFORM pg_notify('operation_finished', finished);
    RETURN NULL;
END;
$$;
