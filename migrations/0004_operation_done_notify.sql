-- Tell listeners (the API's WaitOperation) the moment an operation finishes, whichever path
-- finished it (a worker, a Cancel, a dead letter). Delivered when the transaction commits.

CREATE FUNCTION notify_operation_done() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('operation_done', NEW.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER operations_done_notify
    AFTER UPDATE OF done ON operations
    FOR EACH ROW WHEN (NEW.done AND NOT OLD.done)
    EXECUTE FUNCTION notify_operation_done();
