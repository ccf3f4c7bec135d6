"""``Outbox``: the operations whose publish was never confirmed, claimed by one relay at a
time, and what the sweeper hands back to be sent again."""

from __future__ import annotations

from service.domain.model import ImageChange, Operation
from service.usecases.ports import NewUpdate, OutgoingMessage, Unpublished
from tests.contract.implementations import Implementation
from tests.contract.requests import FOLDER, delete_of, update_of

GRACE = 5.0  # the relay leaves an operation this long to the API's own publish
CLAIM = 10.0
LEASE = 30.0
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def accepted(port: Implementation, count: int = 1) -> list[Operation]:
    operations = []
    for _ in range(count):
        image = await port.add_image(FOLDER)
        operations.append((await port.accepts.begin_delete(delete_of(image.id))).operation)
    return operations


def sent(*operations: Operation, message_id: str | None = None) -> list[OutgoingMessage]:
    """The operations as sent in one message (of their first's ID, unless given)."""
    message_id = message_id or "msg" + operations[0].id[3:]
    return [OutgoingMessage(message_id, tuple(Unpublished(op.id) for op in operations))]


async def unpublished(port: Implementation, limit: int = 100) -> list[str]:
    return [u.operation_id for u in await port.outbox.claim_unpublished(GRACE, limit, CLAIM)]


async def test_operations_never_published_are_claimed_oldest_first(port: Implementation) -> None:
    operations = await accepted(port, 3)
    await port.pass_time(GRACE + 1)

    assert await unpublished(port) == [op.id for op in operations]


async def test_an_operation_within_the_grace_is_not_claimed(port: Implementation) -> None:
    await accepted(port)
    await port.pass_time(GRACE - 1)

    assert await unpublished(port) == []


async def test_a_claim_takes_at_most_its_limit(port: Implementation) -> None:
    operations = await accepted(port, 3)
    await port.pass_time(GRACE + 1)

    assert await unpublished(port, limit=2) == [op.id for op in operations[:2]]


async def test_a_claimed_operation_is_not_claimed_again_while_the_claim_runs(
    port: Implementation,
) -> None:
    await accepted(port)
    await port.pass_time(GRACE + 1)
    await unpublished(port)
    await port.pass_time(CLAIM - 1)

    assert await unpublished(port) == []


async def test_a_claimed_operation_is_claimed_again_once_the_claim_ran_out(
    port: Implementation,
) -> None:
    [operation] = await accepted(port)
    await port.pass_time(GRACE + 1)
    await unpublished(port)
    await port.pass_time(CLAIM + 1)

    assert await unpublished(port) == [operation.id]


async def test_a_released_claim_is_claimed_again_at_once(port: Implementation) -> None:
    [operation] = await accepted(port)
    await port.pass_time(GRACE + 1)
    await unpublished(port)

    await port.outbox.release_claims([operation.id])

    assert await unpublished(port) == [operation.id]


async def test_a_published_operation_is_not_claimed(port: Implementation) -> None:
    published, unmarked = await accepted(port, 2)
    await port.outbox.mark_published(sent(published))
    await port.pass_time(GRACE + 1)

    assert await unpublished(port) == [unmarked.id]


async def test_a_finished_operation_is_not_claimed(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    update = await port.accepts.begin_update(update_of(image.id), ImageChange(description="d"))
    await port.finishes.apply_updates([update.operation.id])
    await port.pass_time(GRACE + 1)

    assert await unpublished(port) == []


async def test_a_claim_carries_the_trace_the_operation_was_accepted_in(
    port: Implementation,
) -> None:
    image = await port.add_image(FOLDER)
    update = NewUpdate(update_of(image.id), ImageChange(description="d"), None, TRACEPARENT)
    [operation] = await port.accepts.begin_updates([update])
    assert operation is not None
    await port.pass_time(GRACE + 1)

    claimed = await port.outbox.claim_unpublished(GRACE, 10, CLAIM)

    assert claimed == [Unpublished(operation.id, TRACEPARENT)]


async def test_an_operation_a_worker_holds_is_not_claimed_though_unmarked(
    port: Implementation,
) -> None:
    """The worker took it before its published mark was written (the mark then skips it):
    it was delivered, and is not sent again while the lease runs."""
    [operation] = await accepted(port)
    await port.finishes.claim_with_lease(operation.id, LEASE)
    await port.pass_time(GRACE + 1)

    assert await unpublished(port) == []
    await port.pass_time(LEASE)  # the worker died: its lease ran out
    assert await unpublished(port) == [operation.id]


async def test_an_operation_whose_lease_ran_out_is_requeued(port: Implementation) -> None:
    [operation] = await accepted(port)
    await port.outbox.mark_published(sent(operation))
    await port.finishes.claim_with_lease(operation.id, LEASE)
    await port.pass_time(LEASE + 1)

    assert await port.outbox.requeue_expired_leases() == [operation.id]
    assert await unpublished(port) == [operation.id]
    assert await port.finishes.claim_with_lease(operation.id, LEASE) is not None


async def test_a_running_lease_is_not_requeued(port: Implementation) -> None:
    [operation] = await accepted(port)
    await port.outbox.mark_published(sent(operation))
    await port.finishes.claim_with_lease(operation.id, LEASE)
    await port.pass_time(LEASE - 1)

    assert await port.outbox.requeue_expired_leases() == []


async def test_a_released_lease_is_not_requeued(port: Implementation) -> None:
    [operation] = await accepted(port)
    claim = await port.finishes.claim_with_lease(operation.id, LEASE)
    assert claim is not None
    await port.finishes.release_lease(claim)
    await port.pass_time(LEASE + 1)

    assert await port.outbox.requeue_expired_leases() == []


async def test_published_operations_never_claimed_are_requeued_but_the_newest_kept(
    port: Implementation,
) -> None:
    operations = await accepted(port, 4)
    for operation in operations:
        await port.outbox.mark_published(sent(operation))
    await port.pass_time(60)

    requeued = await port.outbox.requeue_unclaimed(30, keep=1)

    assert sorted(requeued) == sorted(op.id for op in operations[:3])
    assert await unpublished(port) == [op.id for op in operations[:3]]


async def test_the_sweeper_counts_what_waits_in_messages_not_in_operations(
    port: Implementation,
) -> None:
    operations = await accepted(port, 5)
    oldest, middle, newest = operations[:2], operations[2:4], operations[4:]
    for message in (oldest, middle, newest):
        await port.outbox.mark_published(sent(*message))
        await port.pass_time(1)
    await port.pass_time(60)

    # Three messages, two of them may still wait: the oldest message's operations are lost.
    requeued = await port.outbox.requeue_unclaimed(30, keep=2)

    assert sorted(requeued) == sorted(op.id for op in oldest)
    assert await unpublished(port) == [op.id for op in oldest]


async def test_a_message_that_may_still_wait_keeps_every_operation_it_carries(
    port: Implementation,
) -> None:
    operations = await accepted(port, 4)
    await port.outbox.mark_published(sent(*operations))
    await port.pass_time(60)

    assert await port.outbox.requeue_unclaimed(30, keep=1) == []
    assert sorted(await port.outbox.requeue_unclaimed(30, keep=0)) == sorted(
        op.id for op in operations
    )


async def test_operations_published_lately_are_not_requeued(port: Implementation) -> None:
    [operation] = await accepted(port)
    await port.outbox.mark_published(sent(operation))
    await port.pass_time(20)

    assert await port.outbox.requeue_unclaimed(30, keep=0) == []


async def test_an_operation_a_worker_holds_is_not_requeued_as_unclaimed(
    port: Implementation,
) -> None:
    [operation] = await accepted(port)
    await port.outbox.mark_published(sent(operation))
    await port.finishes.claim_with_lease(operation.id, 3600)
    await port.pass_time(60)

    assert await port.outbox.requeue_unclaimed(30, keep=0) == []
