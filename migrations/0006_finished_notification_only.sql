-- The finished operation is announced on `operation_finished` only: the ID-only
-- `operation_done` of migration 0004 has no listener left. The payload's columns are
-- service/adapters/postgres/rows.py's OPERATION_COLUMNS, read back by the same row mapping;
-- tests/integration/test_rules_agree.py checks that the two agree.

CREATE OR REPLACE FUNCTION notify_operation_done() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    finished text;
BEGIN
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
