-- The lock number of an idempotency key, in one place. Every path that records a key takes
-- this advisory lock first (service/adapters/postgres/accept.py for one Update,
-- begin_updates.sql for a batch), so the two must compute the same number; until now each
-- wrote the expression out. A plain SQL function of one expression is inlined by the
-- planner: calling it costs nothing more than the expression.

CREATE FUNCTION idempotency_key_lock(caller text, key text) RETURNS bigint
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT hashtextextended(caller || '/' || key, 0) $$;
