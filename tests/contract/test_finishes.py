"""``Finishes``: claims and their leases, the one-step Update, and the transaction that
finishes an operation."""

from __future__ import annotations

import pytest

from service.domain.errors import AlreadyExists, Code
from service.domain.model import (
    ClaimedOperation,
    Image,
    ImageChange,
    ImageStatus,
    NewOperation,
    Operation,
    OperationError,
    OperationKind,
)
from tests.contract.implementations import Implementation
from tests.contract.requests import FOLDER, create_request, delete_of, update_of

LEASE = 30.0


async def accepted_update(port: Implementation, change: ImageChange | None = None) -> Operation:
    image = await port.add_image(FOLDER)
    accepted = await port.accepts.begin_update(update_of(image.id), change or ImageChange(name="n"))
    return accepted.operation


async def accepted_delete(port: Implementation) -> Operation:
    image = await port.add_image(FOLDER)
    return (await port.accepts.begin_delete(delete_of(image.id))).operation


async def claimed(port: Implementation, operation: Operation) -> ClaimedOperation:
    claim = await port.finishes.claim_with_lease(operation.id, LEASE)
    assert claim is not None
    return claim


async def read(port: Implementation, operation: Operation | NewOperation) -> Operation:
    [found] = await port.reads.get_operations([operation.id])
    assert found is not None
    return found


async def image_of(port: Implementation, operation: Operation) -> Image | None:
    return await port.reads.get_image(operation.image_id)


# --- claims and leases ----------------------------------------------------------------------


async def test_a_claim_takes_an_unfinished_operation_as_its_first_attempt(
    port: Implementation,
) -> None:
    operation = await accepted_delete(port)

    claim = await port.finishes.claim_with_lease(operation.id, LEASE)

    assert claim == ClaimedOperation(
        operation.id,
        OperationKind.DELETE_IMAGE,
        operation.image_id,
        FOLDER,
        {"status_before": int(ImageStatus.READY)},
        1,
    )


async def test_a_claim_carries_what_an_update_asked(port: Implementation) -> None:
    operation = await accepted_update(port, ImageChange(name="n", labels={"a": "b"}))

    claim = await claimed(port, operation)

    assert ImageChange.from_json(claim.request) == ImageChange(name="n", labels={"a": "b"})


async def test_an_operation_under_a_running_lease_is_not_claimed(port: Implementation) -> None:
    operation = await accepted_delete(port)
    await claimed(port, operation)

    assert await port.finishes.claim_with_lease(operation.id, LEASE) is None


async def test_an_operation_whose_lease_ran_out_is_claimed_again(port: Implementation) -> None:
    operation = await accepted_delete(port)
    await claimed(port, operation)
    await port.pass_time(LEASE + 1)

    claim = await port.finishes.claim_with_lease(operation.id, LEASE)

    assert claim is not None
    assert claim.attempt == 2


async def test_a_finished_operation_is_not_claimed(port: Implementation) -> None:
    operation = await accepted_update(port)
    assert await port.finishes.apply_updates([operation.id]) == [True]

    assert await port.finishes.claim_with_lease(operation.id, LEASE) is None


async def test_a_missing_operation_is_not_claimed(port: Implementation) -> None:
    assert await port.finishes.claim_with_lease("opn-missing", LEASE) is None


async def test_an_extended_lease_outlives_the_first(port: Implementation) -> None:
    operation = await accepted_delete(port)
    claim = await claimed(port, operation)
    await port.pass_time(LEASE - 1)

    assert await port.finishes.extend_lease(claim, LEASE)
    await port.pass_time(2)
    assert await port.finishes.claim_with_lease(operation.id, LEASE) is None


async def test_a_lease_claimed_again_by_another_is_not_extended(port: Implementation) -> None:
    operation = await accepted_delete(port)
    first = await claimed(port, operation)
    await port.pass_time(LEASE + 1)
    await claimed(port, operation)

    assert not await port.finishes.extend_lease(first, LEASE)


async def test_the_lease_of_a_finished_operation_is_not_extended(port: Implementation) -> None:
    operation = await accepted_delete(port)
    claim = await claimed(port, operation)
    async with port.finishes.transaction() as tx:
        await tx.finish_deleted(operation.id)

    assert not await port.finishes.extend_lease(claim, LEASE)


async def test_a_released_operation_is_claimed_again_at_once(port: Implementation) -> None:
    operation = await accepted_delete(port)
    claim = await claimed(port, operation)

    await port.finishes.release_lease(claim)

    again = await port.finishes.claim_with_lease(operation.id, LEASE)
    assert again is not None
    assert again.attempt == 2


async def test_releasing_an_old_claim_leaves_the_new_one_held(port: Implementation) -> None:
    operation = await accepted_delete(port)
    first = await claimed(port, operation)
    await port.pass_time(LEASE + 1)
    await claimed(port, operation)

    await port.finishes.release_lease(first)

    assert await port.finishes.claim_with_lease(operation.id, LEASE) is None


# --- the one-step Update --------------------------------------------------------------------


async def test_applied_updates_change_the_image_and_finish_the_operation(
    port: Implementation,
) -> None:
    change = ImageChange(name="n", description="d", labels={"k": "v"})
    operation = await accepted_update(port, change)

    assert await port.finishes.apply_updates([operation.id]) == [True]

    image = await image_of(port, operation)
    assert image is not None
    assert (image.name, image.description, image.labels, image.status) == (
        "n",
        "d",
        {"k": "v"},
        ImageStatus.READY,
    )
    done = await read(port, operation)
    assert (done.done, done.response, done.error) == (True, image, None)


async def test_applying_leaves_what_is_not_an_unfinished_update(port: Implementation) -> None:
    delete = await accepted_delete(port)
    update = await accepted_update(port, ImageChange(description="d"))
    finished = await accepted_update(port, ImageChange(description="e"))
    assert await port.finishes.apply_updates([finished.id]) == [True]

    applied = await port.finishes.apply_updates([delete.id, "opn-missing", finished.id, update.id])

    assert applied == [False, False, False, True]


async def test_applying_leaves_an_update_whose_image_is_not_updating(port: Implementation) -> None:
    operation = await accepted_update(port)
    async with port.finishes.transaction() as tx:
        await tx.set_image_status(operation.image_id, ImageStatus.READY)

    assert await port.finishes.apply_updates([operation.id]) == [False]
    assert not (await read(port, operation)).done


async def test_applying_leaves_every_update_when_a_new_name_is_taken(port: Implementation) -> None:
    free = await accepted_update(port, ImageChange(name="free"))
    clash = await accepted_update(port, ImageChange(name="taken-meanwhile"))
    await port.add_image(FOLDER, name="taken-meanwhile")

    applied = await port.finishes.apply_updates([free.id, clash.id])

    assert applied == [False, False]
    assert not (await read(port, free)).done


def replace_name(image: Image, name: str) -> Image:
    return Image(
        image.id,
        image.folder_id,
        name,
        image.description,
        image.checksum,
        image.status,
        image.created_at,
        image.labels,
    )


# --- the finishing transaction --------------------------------------------------------------


async def test_a_transaction_locks_an_unfinished_operation_as_claimed(port: Implementation) -> None:
    operation = await accepted_delete(port)
    claim = await claimed(port, operation)

    async with port.finishes.transaction() as tx:
        assert await tx.lock_operation(operation.id) == claim
        assert await tx.lock_operation(operation.id, claim.attempt) == claim


async def test_a_transaction_does_not_lock_an_operation_claimed_again(port: Implementation) -> None:
    operation = await accepted_delete(port)
    first = await claimed(port, operation)
    await port.pass_time(LEASE + 1)
    await claimed(port, operation)

    async with port.finishes.transaction() as tx:
        assert await tx.lock_operation(operation.id, first.attempt) is None


async def test_a_transaction_does_not_lock_a_finished_operation(port: Implementation) -> None:
    operation = await accepted_update(port)
    await port.finishes.apply_updates([operation.id])

    async with port.finishes.transaction() as tx:
        assert await tx.lock_operation(operation.id) is None


async def test_a_committed_transaction_saves_the_image_and_finishes_the_operation(
    port: Implementation,
) -> None:
    image, operation, request = create_request("disk")
    await port.accepts.insert_create(image, operation, request)

    async with port.finishes.transaction() as tx:
        locked = await tx.lock_image(image.id)
        assert locked is not None
        ready = Image(
            locked.id,
            locked.folder_id,
            locked.name,
            locked.description,
            "9e107d9d372bb6826bd81d3542a419d6",
            ImageStatus.READY,
            locked.created_at,
            locked.labels,
        )
        await tx.save_image(ready)
        await tx.finish(operation.id, response=ready)

    assert await port.reads.get_image(image.id) == ready
    done = await read(port, operation)
    assert (done.done, done.response, done.error) == (True, ready, None)


async def test_a_transaction_ended_by_an_error_changes_nothing(port: Implementation) -> None:
    operation = await accepted_update(port)

    async def cancel_then_die() -> None:
        async with port.finishes.transaction() as tx:
            await tx.set_image_status(operation.image_id, ImageStatus.READY)
            await tx.finish(operation.id, error=OperationError(Code.CANCELLED, "cancelled"))
            raise RuntimeError("the worker died")

    with pytest.raises(RuntimeError):
        await cancel_then_die()

    image = await image_of(port, operation)
    assert image is not None
    assert image.status is ImageStatus.UPDATING
    assert not (await read(port, operation)).done


async def test_an_operation_finishes_with_its_error(port: Implementation) -> None:
    operation = await accepted_update(port)

    async with port.finishes.transaction() as tx:
        await tx.finish(operation.id, error=OperationError(Code.CANCELLED, "cancelled"))

    done = await read(port, operation)
    assert (done.done, done.response, done.error) == (
        True,
        None,
        OperationError(Code.CANCELLED, "cancelled"),
    )


async def test_a_finished_operation_is_not_finished_again(port: Implementation) -> None:
    operation = await accepted_update(port)
    async with port.finishes.transaction() as tx:
        await tx.finish(operation.id, error=OperationError(Code.CANCELLED, "cancelled"))

    async with port.finishes.transaction() as tx:
        await tx.finish(operation.id, error=OperationError(Code.INTERNAL, "late"))

    error = (await read(port, operation)).error
    assert error == OperationError(Code.CANCELLED, "cancelled")


async def test_finishing_with_both_a_response_and_an_error_is_refused(port: Implementation) -> None:
    operation = await accepted_update(port)
    image = await image_of(port, operation)
    assert image is not None

    with pytest.raises(ValueError, match="exactly one"):
        async with port.finishes.transaction() as tx:
            await tx.finish(
                operation.id, response=image, error=OperationError(Code.INTERNAL, "both")
            )


async def test_a_finished_delete_removes_its_image_and_has_no_response(
    port: Implementation,
) -> None:
    operation = await accepted_delete(port)

    async with port.finishes.transaction() as tx:
        await tx.delete_image(operation.image_id)
        await tx.finish_deleted(operation.id)

    assert await image_of(port, operation) is None
    done = await read(port, operation)
    assert (done.done, done.response, done.error) == (True, None, None)


async def test_saving_a_name_taken_is_refused_and_the_transaction_goes_on(
    port: Implementation,
) -> None:
    await port.add_image(FOLDER, name="taken")
    operation = await accepted_update(port, ImageChange(name="taken-later"))

    async with port.finishes.transaction() as tx:
        image = await tx.lock_image(operation.image_id)
        assert image is not None
        with pytest.raises(AlreadyExists):
            await tx.save_image(replace_name(image, "taken"))
        await tx.set_image_status(image.id, ImageStatus.READY)
        await tx.finish(operation.id, error=OperationError(Code.ALREADY_EXISTS, "taken"))

    after = await image_of(port, operation)
    assert after is not None
    assert (after.name, after.status) == (image.name, ImageStatus.READY)
    assert (await read(port, operation)).done
