"""``Retention``: finished operations, idempotency keys and expired tokens removed once old
enough."""

from __future__ import annotations

from service.domain.model import ImageChange, Operation
from tests.contract.implementations import Implementation
from tests.contract.requests import FOLDER, delete_of, key, stored_token, update_of

DAY = 86400.0


async def finished_update(port: Implementation) -> Operation:
    image = await port.add_image(FOLDER)
    accepted = await port.accepts.begin_update(update_of(image.id), ImageChange(description="d"))
    assert await port.finishes.apply_updates([accepted.operation.id]) == [True]
    return accepted.operation


async def test_finished_operations_older_than_the_age_are_removed(port: Implementation) -> None:
    operation = await finished_update(port)
    await port.pass_time(DAY + 1)

    assert await port.retention.delete_finished_operations(DAY, 100) == 1
    assert await port.reads.get_operations([operation.id]) == [None]


async def test_finished_operations_younger_than_the_age_are_kept(port: Implementation) -> None:
    operation = await finished_update(port)
    await port.pass_time(DAY - 1)

    assert await port.retention.delete_finished_operations(DAY, 100) == 0
    assert await port.reads.get_operations([operation.id]) != [None]


async def test_unfinished_operations_are_kept_however_old(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    operation = (await port.accepts.begin_delete(delete_of(image.id))).operation
    await port.pass_time(DAY + 1)

    assert await port.retention.delete_finished_operations(DAY, 100) == 0
    assert await port.reads.get_operations([operation.id]) != [None]


async def test_a_removal_takes_at_most_one_batch(port: Implementation) -> None:
    for _ in range(3):
        await finished_update(port)
    await port.pass_time(DAY + 1)

    assert await port.retention.delete_finished_operations(DAY, 2) == 2
    assert await port.retention.delete_finished_operations(DAY, 2) == 1


async def test_an_expired_key_is_removed_and_starts_a_new_operation(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    first = await port.accepts.begin_delete(delete_of(image.id), key("k1"))
    await port.pass_time(DAY + 1)
    other = await port.add_image(FOLDER)

    assert await port.retention.delete_expired_idempotency_keys(DAY) == 1
    again = await port.accepts.begin_delete(delete_of(other.id), key("k1"))
    assert (again.replayed, again.operation.id != first.operation.id) == (False, True)


async def test_a_key_younger_than_the_age_is_kept(port: Implementation) -> None:
    image = await port.add_image(FOLDER)
    await port.accepts.begin_delete(delete_of(image.id), key("k1"))
    await port.pass_time(DAY - 1)

    assert await port.retention.delete_expired_idempotency_keys(DAY) == 0
    again = await port.accepts.begin_delete(delete_of(image.id), key("k1"))
    assert again.replayed


async def test_a_token_expired_longer_than_the_age_is_removed(port: Implementation) -> None:
    expiring = stored_token(expires_in_days=1)  # expired a day ago once three days pass
    lasting = stored_token(expires_in_days=None)
    later = stored_token(expires_in_days=30)
    for token in (expiring, lasting, later):
        await port.tokens.insert_token(token)
    await port.pass_time(3 * DAY)

    assert await port.retention.delete_expired_tokens(DAY) == 1
    assert await port.tokens.find_token(expiring.id) is None
    assert await port.tokens.find_token(lasting.id) is not None
    assert await port.tokens.find_token(later.id) is not None
    assert await port.retention.delete_expired_tokens(DAY) == 0
