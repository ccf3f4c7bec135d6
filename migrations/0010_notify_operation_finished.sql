-- Names that say what they do: the trigger function sends the finished operation on
-- `operation_finished` (migration 0006), so it and its trigger are named for that. The
-- function's body is unchanged.

ALTER FUNCTION notify_operation_done() RENAME TO notify_operation_finished;
ALTER TRIGGER operations_done_notify ON operations RENAME TO operations_finished_notify;
