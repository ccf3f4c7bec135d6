-- The W3C trace context (`traceparent`) of the call that accepted an operation, when tracing
-- is on (NULL otherwise). The outbox relay sends an operation the API could not publish in
-- this context, so the worker's spans join the accepting call's trace
-- (service/runtime/tracing.py).

ALTER TABLE operations ADD COLUMN trace_context text;
