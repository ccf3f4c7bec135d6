"""The outbox, both halves: the API publishes what it accepted and marks what the broker
confirmed; the workers' relay publishes what was never confirmed, and the sweeper hands out
again what a dead worker held or a lost message carried.

The operation row is the outbox (``published_at``, and the message it went in). A mark lost
in a crash only means the relay sends that operation once more, which is harmless: workers
apply each operation once.

A message carries several operations (``OutgoingMessage``): the API sends those accepted
while its earlier messages wait for their confirm together (``Publishes``), the relay sends
what it claimed in messages of up to ``OPERATIONS_PER_MESSAGE``. One publish, one confirm,
one delivery and one ack serve them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import structlog

from service.domain.errors import ServiceError
from service.domain.ids import new_id
from service.runtime import metrics, tracing
from service.runtime.batching import MicroBatcher
from service.usecases.ports import MessageQueue, Outbox, OutgoingMessage, Publisher, Unpublished

log = structlog.get_logger(__name__)

# The most operations one message carries: a body of about 2.6 KB, and what a worker applies
# in one statement (usecases/execute.Executor's batch).
OPERATIONS_PER_MESSAGE = 128
# Messages the API has waiting for their confirm at once; what is accepted meanwhile goes in
# the next one.
PUBLISHES_IN_FLIGHT = 2
MESSAGE_ID_PREFIX = "msg"

RELAY_BATCH = 256
# How long a relay holds the batch it is sending. Long enough for a batch in the normal case
# (a confirm takes milliseconds); a relay whose publishes get slower stops before its claim
# could run out, and one that died holds its batch no longer than this.
RELAY_CLAIM_SECONDS = 30.0


# How long the API gathers published operations before it marks them: a quarter of the
# relay's grace (``OUTBOX_GRACE_SECONDS``), so a mark lands long before the relay would send
# the operation again, and at most half a second, so the outbox and its gauge are that fresh.
MARKS_SHARE_OF_GRACE = 0.25
MARKS_INTERVAL_MAX = 0.5
MARKS_INTERVAL_MIN = 0.01


def published_marks_interval(relay_grace_seconds: float) -> float:
    """The gathering interval of ``PublishedMarks`` for a relay that waits
    ``relay_grace_seconds`` before it sends an unmarked operation."""
    share = relay_grace_seconds * MARKS_SHARE_OF_GRACE
    return max(MARKS_INTERVAL_MIN, min(MARKS_INTERVAL_MAX, share))


def new_message(operations: list[Unpublished]) -> OutgoingMessage:
    return OutgoingMessage(new_id(MESSAGE_ID_PREFIX), tuple(operations))


class PublishedMarks:
    """Marks published operations (and the message each went in) in batches, off the request
    path.

    One UPDATE per request would double the database work of an Update; a batch every
    ``interval`` costs one statement for many. The wait also spares rows: an operation a worker
    finished meanwhile needs no mark (the relay looks at unfinished ones only), and the
    statement skips it, so it gets no row version of its own (with the API's interval,
    ``published_marks_interval``, most operations are finished first when the workers keep
    up). ``run`` is the background task.
    """

    def __init__(self, outbox: Outbox, interval: float = 0.01, batch: int = 1000) -> None:
        self._outbox = outbox
        self._interval = interval
        self._batch = batch  # operations per statement, about
        self._pending: list[OutgoingMessage] = []
        self._wakeup = asyncio.Event()

    def add(self, message: OutgoingMessage) -> None:
        self._pending.append(message)
        self._wakeup.set()

    async def run(self) -> None:
        while True:
            await self._wakeup.wait()
            await asyncio.sleep(self._interval)  # gather what arrives meanwhile
            await self.flush()

    async def flush(self) -> None:
        self._wakeup.clear()
        while self._pending:
            taken = operations = 0
            for message in self._pending:  # whole messages, about ``batch`` operations
                taken += 1
                operations += len(message.operations)
                if operations >= self._batch:
                    break
            batch, self._pending = self._pending[:taken], self._pending[taken:]
            try:
                await self._outbox.mark_published(batch)
            except ServiceError as exc:
                # Left unmarked: the relay publishes them again, which is harmless.
                log.warning("outbox.mark_failed", error=exc.message, count=operations)


class Publishes:
    """The API's publishes: an operation is sent as soon as it is accepted, in one message
    with every other accepted while ``PUBLISHES_IN_FLIGHT`` earlier messages wait for their
    confirm, and marked once confirmed (``PublishedMarks``). A lone call's message goes at
    once and carries it alone; under load one publish and one confirm serve many calls.
    """

    def __init__(self, publisher: Publisher, marks: PublishedMarks, timeout: float) -> None:
        self._publisher = publisher
        self._marks = marks
        self._timeout = timeout
        self._messages = MicroBatcher(
            self._send,
            max_batch=OPERATIONS_PER_MESSAGE,
            max_in_flight=PUBLISHES_IN_FLIGHT,
            name="publish",
        )

    async def publish(self, operation: Unpublished) -> None:
        """Returns once the message carrying ``operation`` is confirmed; ``ServiceError``
        (``Unavailable``) if it was not, and then the relay sends it later."""
        await self._messages.submit(operation)

    async def _send(self, operations: Sequence[Unpublished]) -> list[None]:
        message = new_message(list(operations))
        await self._publisher.publish(message, self._timeout)
        self._marks.add(message)
        return [None] * len(operations)


async def publish_pending(
    outbox: Outbox,
    publisher: Publisher,
    *,
    older_than: float,
    publish_timeout: float,
    claim_seconds: float = RELAY_CLAIM_SECONDS,
) -> int:
    """Publish every unpublished, unfinished operation older than ``older_than`` seconds.

    Batch by batch: claimed for ``claim_seconds`` in a statement of its own, published
    outside any transaction (a slow broker holds no row lock) in messages of up to
    ``OPERATIONS_PER_MESSAGE``, then marked. Other relays skip
    what is claimed, so relays in several worker processes do not send one operation at the
    same time: each stops publishing its batch while a publish could still outlast the claim,
    and gives back what it did not send. One that dies leaves its claim to run out; another
    then sends those, a duplicate message at worst, which workers apply once. Returns how
    many were published.
    """
    total = 0
    relayed: list[str] = []  # the first few, for the log line
    if not publisher.is_healthy():
        return total  # nothing can be sent; the rows wait in the outbox
    loop = asyncio.get_running_loop()
    while True:
        claimed_at = loop.time()  # before the claim: the claim ends later than this says
        pending = await outbox.claim_unpublished(older_than, RELAY_BATCH, claim_seconds)
        sent: list[OutgoingMessage] = []
        count = 0
        try:
            for start in range(0, len(pending), OPERATIONS_PER_MESSAGE):
                if loop.time() - claimed_at + publish_timeout >= claim_seconds:
                    log.warning("outbox.claim_running_out", sent=count, batch=len(pending))
                    break
                message = new_message(
                    [_relayed(item) for item in pending[start : start + OPERATIONS_PER_MESSAGE]]
                )
                await publisher.publish(message, publish_timeout)
                sent.append(message)
                count += len(message.operations)
                relayed += [o.operation_id for o in message.operations[: 20 - len(relayed)]]
        except ServiceError as exc:
            log.warning("outbox.publish_failed", error=exc.message, sent=count)
        if sent:
            await outbox.mark_published(sent)
        if count < len(pending):
            await outbox.release_claims([item.operation_id for item in pending[count:]])
        total += count
        if count < RELAY_BATCH:
            if total:
                log.info(
                    "outbox.published",
                    count=total,
                    operation_ids=relayed,
                    why="accepted, and not marked as sent within OUTBOX_GRACE_SECONDS",
                )
            return total


def _relayed(item: Unpublished) -> Unpublished:
    """The operation as the relay sends it: in a span of the trace of the call that accepted
    it (``outbox.relay``), which its message's producer span is a child of."""
    with tracing.resumed(
        "outbox.relay", item.trace_context, {"image.operation.id": item.operation_id}
    ):
        return Unpublished(item.operation_id, tracing.traceparent() or item.trace_context)


async def requeue_abandoned(
    outbox: Outbox,
    queue: MessageQueue,
    *,
    republish_after_seconds: float,
    prefetch: int,
) -> list[str]:
    """The sweeper's step: what a dead worker held or a lost message carried goes back to
    the relay, to be sent again.

    A lease that ran out means its worker died. A lost message is told from a waiting one by
    asking the broker, in messages (the unit the broker counts in): an operation published
    more than ``republish_after_seconds`` ago and never claimed may have lost its message, or
    be waiting in a backlog (workers stopped, or slower than the API). While messages are
    ready in the queue, every consumer also holds a full window of ``prefetch`` delivered
    ones (the workers' ``WORKER_CONCURRENCY``), so that many of the messages such operations
    went in may still be waiting; only the operations of the messages beyond, the oldest,
    are surely lost and sent again. With nothing ready, all of them are: a backlog is never
    sent twice, and a lost message is found at the latest when the queue has drained (then
    an operation still in a worker's hands may be sent once more, which is harmless). When
    the broker cannot be asked, only the expired leases are handed out.
    """
    requeued = await outbox.requeue_expired_leases()
    try:
        depth = await queue.queue_depth()
    except ServiceError as exc:
        log.warning("sweeper.queue_unknown", error=exc.message)
    else:
        metrics.OPERATION_COUNTS.update_queue(depth.ready, depth.consumers)
        may_wait = depth.ready + depth.consumers * prefetch if depth.ready else 0
        requeued += await outbox.requeue_unclaimed(republish_after_seconds, may_wait)
    if requeued:
        log.warning("sweeper.requeued", count=len(requeued), operation_ids=requeued[:20])
    return requeued
