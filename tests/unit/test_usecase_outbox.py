"""The outbox: marks of confirmed publishes, the relay of unpublished operations, the sweeper."""

from __future__ import annotations

import asyncio

import pytest
from structlog.testing import capture_logs

from service.domain.errors import Unavailable
from service.domain.model import ImageStatus, Operation, OperationKind
from service.usecases import outbox
from service.usecases.outbox import (
    OPERATIONS_PER_MESSAGE,
    RELAY_BATCH,
    RELAY_CLAIM_SECONDS,
    PublishedMarks,
    Publishes,
    publish_pending,
    published_marks_interval,
    requeue_abandoned,
)
from service.usecases.ports import OutgoingMessage, Unpublished
from tests.unit.fakes import FakePublisher, FakeQueue, FakeStore, until

UPDATE = OperationKind.UPDATE_IMAGE
GRACE = 5.0


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


def pending(store: FakeStore, count: int) -> list[Operation]:
    """Unfinished, unpublished operations, oldest first."""
    image = store.add_image()
    return [store.add_operation(UPDATE, image.id) for _ in range(count)]


def published(store: FakeStore, operations: list[Operation]) -> list[bool]:
    return [store.row(o.id).published_at is not None for o in operations]


def alone(operation: Operation) -> OutgoingMessage:
    """A message carrying ``operation`` only."""
    return OutgoingMessage("msg" + operation.id[3:], (Unpublished(operation.id),))


@pytest.fixture
def two_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """Messages of at most two operations, so a few operations make several messages."""
    monkeypatch.setattr(outbox, "OPERATIONS_PER_MESSAGE", 2)


# --- PublishedMarks -------------------------------------------------------------------------


async def test_marks_are_written_in_batches(store: FakeStore):
    operations = pending(store, 5)
    marks = PublishedMarks(store, batch=2)
    for operation in operations:
        marks.add(alone(operation))
    await marks.flush()
    ids = [o.id for o in operations]
    assert store.mark_batches == [ids[0:2], ids[2:4], ids[4:5]]
    assert published(store, operations) == [True] * 5


async def test_a_flush_with_nothing_added_writes_nothing(store: FakeStore):
    await PublishedMarks(store).flush()
    assert store.calls["mark_published"] == 0


async def test_a_failed_mark_is_logged_and_left_for_the_relay(store: FakeStore):
    operations = pending(store, 2)
    marks = PublishedMarks(store)
    for operation in operations:
        marks.add(alone(operation))
    store.failing_marks = 1
    with capture_logs() as logs:
        await marks.flush()  # does not raise
    assert [(e["event"], e["count"]) for e in logs] == [("outbox.mark_failed", 2)]
    assert published(store, operations) == [False, False]


async def test_a_failed_batch_does_not_stop_the_next_one(store: FakeStore):
    operations = pending(store, 2)
    marks = PublishedMarks(store, batch=1)
    for operation in operations:
        marks.add(alone(operation))
    store.failing_marks = 1
    await marks.flush()
    assert published(store, operations) == [False, True]


async def test_the_background_task_marks_what_arrives_together_in_one_batch(store: FakeStore):
    operations = pending(store, 3)
    marks = PublishedMarks(store, interval=0.001)
    running = asyncio.create_task(marks.run())
    try:
        for operation in operations:
            marks.add(alone(operation))
        await until(lambda: all(published(store, operations)), what="the marks")
    finally:
        running.cancel()
    assert store.mark_batches == [[o.id for o in operations]]


async def test_an_operation_finished_before_the_flush_is_not_marked(store: FakeStore):
    image = store.add_image(status=ImageStatus.UPDATING)
    finished = store.add_operation(UPDATE, image.id, request={"description": "d"})
    [waiting] = pending(store, 1)
    marks = PublishedMarks(store)
    marks.add(OutgoingMessage("msg-both", (Unpublished(finished.id), Unpublished(waiting.id))))
    assert await store.apply_updates([finished.id]) == [True]
    await marks.flush()
    assert published(store, [finished, waiting]) == [False, True]


@pytest.mark.parametrize(
    ("grace", "interval"),
    [(2.0, 0.5), (0.5, 0.125), (0.2, 0.05), (60.0, 0.5), (0.0, 0.01), (0.02, 0.01)],
)
def test_marks_are_gathered_for_a_quarter_of_the_relays_grace_within_bounds(
    grace: float, interval: float
):
    assert published_marks_interval(grace) == pytest.approx(interval)


# --- Publishes: the API's messages ---------------------------------------------------------


def publishes(store: FakeStore, publisher: FakePublisher) -> tuple[Publishes, PublishedMarks]:
    marks = PublishedMarks(store)
    return Publishes(publisher, marks, timeout=1.0), marks


async def test_a_lone_operation_goes_at_once_in_a_message_of_its_own(
    store: FakeStore, publisher: FakePublisher
):
    [operation] = pending(store, 1)
    sender, marks = publishes(store, publisher)
    await sender.publish(Unpublished(operation.id, "00-trace"))
    assert [m.operations for m in publisher.messages] == [(Unpublished(operation.id, "00-trace"),)]
    await marks.flush()
    assert store.row(operation.id).message_id == publisher.messages[0].id


async def test_operations_accepted_together_go_in_one_message_and_one_confirm(
    store: FakeStore, publisher: FakePublisher
):
    operations = pending(store, 10)
    sender, marks = publishes(store, publisher)
    await asyncio.gather(*(sender.publish(Unpublished(o.id)) for o in operations))
    # The first goes at once; the rest arrive in the same turn and go together in the next.
    assert sorted(publisher.published) == sorted(o.id for o in operations)
    assert len(publisher.messages) <= 2
    await marks.flush()
    assert all(published(store, operations))


async def test_a_message_not_confirmed_fails_every_call_it_carries_and_marks_none(
    store: FakeStore, publisher: FakePublisher
):
    operations = pending(store, 3)
    sender, marks = publishes(store, publisher)
    publisher.fail_after = 0
    outcomes = await asyncio.gather(
        *(sender.publish(Unpublished(o.id)) for o in operations), return_exceptions=True
    )
    assert all(isinstance(outcome, Unavailable) for outcome in outcomes)
    await marks.flush()
    assert not any(published(store, operations))  # left to the relay


# --- publish_pending ------------------------------------------------------------------------


async def relay(store: FakeStore, publisher: FakePublisher) -> int:
    return await publish_pending(store, publisher, older_than=GRACE, publish_timeout=1.0)


async def test_the_relay_publishes_everything_older_than_the_grace_in_batches(
    store: FakeStore, publisher: FakePublisher
):
    old = pending(store, 2 * RELAY_BATCH + 50)
    store.advance(GRACE * 2)
    young = pending(store, 3)
    assert await relay(store, publisher) == len(old)
    assert publisher.published == [o.id for o in old]
    assert store.calls["claim_unpublished"] == 3
    assert all(published(store, old))
    assert not any(published(store, young))


async def test_a_full_last_batch_is_followed_by_an_empty_look(
    store: FakeStore, publisher: FakePublisher
):
    old = pending(store, RELAY_BATCH)
    store.advance(GRACE * 2)
    assert await relay(store, publisher) == RELAY_BATCH
    assert publisher.published == [o.id for o in old]
    assert store.calls["claim_unpublished"] == 2


async def test_the_relay_skips_what_was_published_or_finished(
    store: FakeStore, publisher: FakePublisher
):
    image = store.add_image()
    store.add_operation(UPDATE, image.id, published=True)
    store.add_operation(UPDATE, image.id, done=True)
    waiting = store.add_operation(UPDATE, image.id)
    store.advance(GRACE * 2)
    assert await relay(store, publisher) == 1
    assert publisher.published == [waiting.id]


async def test_the_relay_says_which_operations_it_sent_and_why(
    store: FakeStore, publisher: FakePublisher
):
    operations = pending(store, 25)
    store.advance(GRACE * 2)
    with capture_logs() as logs:
        await relay(store, publisher)
    [line] = [e for e in logs if e["event"] == "outbox.published"]
    assert line["count"] == 25
    assert line["operation_ids"] == [o.id for o in operations[:20]]  # the first twenty
    assert "not marked as sent within OUTBOX_GRACE_SECONDS" in line["why"]


async def test_the_relay_leaves_what_a_worker_holds_though_unmarked(
    store: FakeStore, publisher: FakePublisher
):
    """A worker took the Create before its mark was written: not sent a second time."""
    [taken, waiting] = pending(store, 2)
    assert await store.claim_with_lease(taken.id, 60) is not None
    store.advance(GRACE * 2)
    assert await relay(store, publisher) == 1
    assert publisher.published == [waiting.id]


async def test_with_an_unhealthy_broker_the_relay_sends_nothing(
    store: FakeStore, publisher: FakePublisher
):
    operations = pending(store, 3)
    store.advance(GRACE * 2)
    publisher.healthy = False
    assert await relay(store, publisher) == 0
    assert publisher.published == []
    assert store.calls["claim_unpublished"] == 0
    assert not any(published(store, operations))


async def test_the_relay_sends_what_it_claimed_in_messages_of_at_most_their_size(
    store: FakeStore, publisher: FakePublisher
):
    old = pending(store, RELAY_BATCH + 44)
    store.advance(GRACE * 2)
    assert await relay(store, publisher) == len(old)
    sizes = [len(message.operations) for message in publisher.messages]
    assert sizes == [OPERATIONS_PER_MESSAGE] * (RELAY_BATCH // OPERATIONS_PER_MESSAGE) + [44]
    assert len({message.id for message in publisher.messages}) == len(sizes)
    # Each operation is marked with the message it went in.
    for message in publisher.messages:
        assert {store.row(i).message_id for i in message.operation_ids} == {message.id}


async def test_a_publish_failure_midway_marks_only_what_was_sent(
    store: FakeStore, publisher: FakePublisher, two_per_message: None
):
    operations = pending(store, 5)
    store.advance(GRACE * 2)
    publisher.fail_after = 1  # the first message of two is confirmed, the next is not
    with capture_logs() as logs:
        assert await relay(store, publisher) == 2
    assert published(store, operations) == [True, True, False, False, False]
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["outbox.publish_failed"]


async def test_a_second_run_sends_what_the_failed_one_left(
    store: FakeStore, publisher: FakePublisher, two_per_message: None
):
    operations = pending(store, 5)
    store.advance(GRACE * 2)
    publisher.fail_after = 1
    await relay(store, publisher)
    publisher.fail_after = None
    assert await relay(store, publisher) == 3
    assert publisher.published == [o.id for o in operations]


async def test_what_another_relay_claimed_is_left_to_it_until_its_claim_runs_out(
    store: FakeStore, publisher: FakePublisher
):
    operations = pending(store, 3)
    store.advance(GRACE * 2)
    # A relay claimed them and died before sending.
    assert len(await store.claim_unpublished(GRACE, RELAY_BATCH, RELAY_CLAIM_SECONDS)) == 3
    assert await relay(store, publisher) == 0
    store.advance(RELAY_CLAIM_SECONDS + 1)
    assert await relay(store, publisher) == 3
    assert publisher.published == [o.id for o in operations]


class SlowPublisher(FakePublisher):
    """Each confirm takes ``seconds`` (of the loop's clock, which the relay measures)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def publish(self, message: OutgoingMessage, timeout: float) -> None:
        await asyncio.sleep(self.seconds)
        await super().publish(message, timeout)


async def test_a_relay_stops_sending_before_its_claim_could_run_out_and_gives_the_rest_back(
    store: FakeStore, two_per_message: None
):
    operations = pending(store, 10)
    store.advance(GRACE * 2)
    publisher = SlowPublisher(0.02)
    with capture_logs() as logs:
        sent = await publish_pending(
            store, publisher, older_than=GRACE, publish_timeout=0.02, claim_seconds=0.1
        )
    assert 0 < sent < 10
    assert sent % 2 == 0  # whole messages
    assert published(store, operations) == [True] * sent + [False] * (10 - sent)
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["outbox.claim_running_out"]
    left = [store.row(o.id).relay_claimed_until for o in operations[sent:]]
    assert left == [None] * (10 - sent), "given back at once, for the next run"


# --- requeue_abandoned ----------------------------------------------------------------------

PREFETCH = 4


async def sweep(store: FakeStore, queue: FakeQueue) -> list[str]:
    return await requeue_abandoned(store, queue, republish_after_seconds=60, prefetch=PREFETCH)


def published_long_ago(store: FakeStore, count: int) -> list[Operation]:
    """Unfinished Updates published two minutes ago (oldest first), never claimed."""
    image = store.add_image()
    operations = [store.add_operation(UPDATE, image.id, published=True) for _ in range(count)]
    store.advance(120)
    return operations


async def test_an_expired_lease_is_requeued_and_logged(store: FakeStore):
    image = store.add_image()
    held = store.add_operation(OperationKind.CREATE_IMAGE, image.id, request={"uri": "x"})
    claim = await store.claim_with_lease(held.id, 1)
    assert claim is not None
    store.advance(120)
    with capture_logs() as logs:
        requeued = await sweep(store, FakeQueue(ready=100))
    assert requeued == [held.id]
    assert [(e["event"], e["count"]) for e in logs] == [("sweeper.requeued", 1)]
    assert store.row(held.id).lease_until is None


async def test_with_an_empty_queue_every_operation_published_long_ago_is_requeued(
    store: FakeStore,
):
    lost = published_long_ago(store, 3)
    fresh = store.add_operation(UPDATE, store.add_image().id, published=True)
    assert sorted(await sweep(store, FakeQueue(ready=0, consumers=2))) == sorted(o.id for o in lost)
    assert store.row(fresh.id).published_at is not None


async def test_a_backlog_waiting_in_the_queue_is_not_requeued(store: FakeStore):
    waiting = published_long_ago(store, 10)
    assert await sweep(store, FakeQueue(ready=10)) == []
    assert all(published(store, waiting))


async def test_a_backlog_is_counted_in_the_messages_it_waits_in(store: FakeStore):
    """Ten operations sent in two messages, both ready in the queue: nothing is lost. (Counted
    in operations, eight would be taken for lost and sent again.)"""
    operations = pending(store, 10)
    await store.mark_published(
        [
            OutgoingMessage("msg-first", tuple(Unpublished(o.id) for o in operations[:5])),
            OutgoingMessage("msg-second", tuple(Unpublished(o.id) for o in operations[5:])),
        ]
    )
    store.advance(120)
    assert await sweep(store, FakeQueue(ready=2, consumers=0)) == []
    # One of them gone (ready 1, no consumer): the older message's operations are lost.
    lost = await sweep(store, FakeQueue(ready=1, consumers=0))
    assert sorted(lost) == sorted(o.id for o in operations[:5])


async def test_beyond_what_the_queue_and_its_consumers_may_hold_the_oldest_are_requeued(
    store: FakeStore,
):
    """3 ready and one consumer holding up to PREFETCH: of 10, the 3 oldest are lost."""
    operations = published_long_ago(store, 10)
    requeued = await sweep(store, FakeQueue(ready=3, consumers=1))
    assert requeued == [o.id for o in operations[:3]]


async def test_when_the_broker_cannot_say_only_expired_leases_are_requeued(store: FakeStore):
    published_long_ago(store, 2)
    queue = FakeQueue()
    queue.depth = None
    with capture_logs() as logs:
        assert await sweep(store, queue) == []
    assert [e["event"] for e in logs] == ["sweeper.queue_unknown"]


async def test_requeue_with_nothing_abandoned_returns_nothing_and_stays_quiet(
    store: FakeStore,
):
    image = store.add_image()
    store.add_operation(UPDATE, image.id, published=True)
    with capture_logs() as logs:
        assert await sweep(store, FakeQueue()) == []
    assert logs == []
