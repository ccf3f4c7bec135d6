"""``Tokens``: stored API tokens (the hash of each secret), found by ID and revoked once."""

from __future__ import annotations

from tests.contract.implementations import Implementation
from tests.contract.requests import FOLDER, OTHER_FOLDER, delete_of, stored_token


async def test_a_stored_token_is_found_as_stored(port: Implementation) -> None:
    token = stored_token("*", OTHER_FOLDER)

    await port.tokens.insert_token(token)

    assert await port.tokens.find_token(token.id) == token


async def test_a_token_without_expiry_is_found_as_stored(port: Implementation) -> None:
    token = stored_token(expires_in_days=None)

    await port.tokens.insert_token(token)

    assert await port.tokens.find_token(token.id) == token


async def test_an_unknown_token_is_not_found(port: Implementation) -> None:
    assert await port.tokens.find_token("tok-missing") is None


async def test_a_revoked_token_is_found_revoked(port: Implementation) -> None:
    token = stored_token()
    await port.tokens.insert_token(token)

    assert await port.tokens.revoke_token(token.id)

    found = await port.tokens.find_token(token.id)
    assert found is not None
    assert found.revoked_at is not None


async def test_a_token_is_revoked_once(port: Implementation) -> None:
    token = stored_token()
    await port.tokens.insert_token(token)
    await port.tokens.revoke_token(token.id)

    assert not await port.tokens.revoke_token(token.id)


async def test_an_unknown_token_is_not_revoked(port: Implementation) -> None:
    assert not await port.tokens.revoke_token("tok-missing")


async def test_a_revocation_is_stamped_by_the_stores_clock(port: Implementation) -> None:
    token = stored_token()
    await port.tokens.insert_token(token)
    await port.tokens.revoke_token(token.id)
    image = await port.add_image(FOLDER)

    accepted = await port.accepts.begin_delete(delete_of(image.id))

    found = await port.tokens.find_token(token.id)
    assert found is not None
    assert found.revoked_at is not None
    assert found.revoked_at <= accepted.operation.created_at
