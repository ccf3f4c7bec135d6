-- The message an operation was sent in. The API sends the operations it accepts together in
-- one message (one publish, one confirm), and the relay sends what it claimed in messages of
-- up to usecases/outbox.OPERATIONS_PER_MESSAGE, so a message carries many operations.
--
-- The sweeper tells a lost message from a waiting one by comparing what was published long
-- ago and never claimed with the queue's depth, which RabbitMQ counts in messages. It must
-- therefore count those operations in messages too: the published mark records the message
-- (the same statement and row version as published_at, so this costs no write of its own).
--
-- NULL: never marked, or marked before this migration, when every message carried one
-- operation; the sweeper counts such an operation as a message of its own, which is what it
-- was. Adding a nullable column without a default rewrites nothing, and nothing indexes it:
-- the sweeper reads it only for the operations its own conditions select.

ALTER TABLE operations ADD COLUMN message_id text;
