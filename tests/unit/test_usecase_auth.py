"""Authentication with briefly cached tokens; creating and revoking tokens."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta

import pytest

from service.domain.auth import NewToken, Principal, Role, hash_secret
from service.domain.errors import Unauthenticated
from service.domain.model import utcnow
from service.usecases.auth import Authenticator, create_token, revoke_token
from tests.unit.fakes import FakeClock, FakeStore

CACHE_SECONDS = 30.0
FOLDERS = frozenset({"fld-a", "fld-b"})


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def authenticator(store: FakeStore, clock: FakeClock) -> Authenticator:
    return Authenticator(store, CACHE_SECONDS, clock=clock)


async def make_token(
    store: FakeStore, role: Role = Role.EDITOR, expires_in: float | None = None
) -> NewToken:
    return await create_token(store, "alice", role, FOLDERS, expires_in)


def bearer(token: NewToken) -> str:
    return f"Bearer {token.text}"


# --- authenticate ---------------------------------------------------------------------------


async def test_a_valid_token_authenticates_its_principal(
    authenticator: Authenticator, store: FakeStore
):
    token = await make_token(store, Role.VIEWER)
    assert await authenticator.authenticate(bearer(token)) == Principal(
        "alice", Role.VIEWER, FOLDERS
    )


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer not-a-token"])
async def test_a_missing_or_malformed_header_is_unauthenticated_without_a_lookup(
    authenticator: Authenticator, store: FakeStore, header: str | None
):
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(header)
    assert store.calls["find_token"] == 0


async def test_a_wrong_secret_is_unauthenticated(authenticator: Authenticator, store: FakeStore):
    token = await make_token(store)
    wrong = replace(token, secret="x" * len(token.secret))
    with pytest.raises(Unauthenticated, match="Invalid token"):
        await authenticator.authenticate(bearer(wrong))


async def test_an_unknown_token_is_unauthenticated(authenticator: Authenticator):
    unknown = NewToken(id="tok" + "0" * 17, secret="s" * 43)
    with pytest.raises(Unauthenticated, match="Invalid token"):
        await authenticator.authenticate(bearer(unknown))


async def test_an_expired_token_is_unauthenticated(authenticator: Authenticator, store: FakeStore):
    token = await make_token(store, expires_in=-1)
    with pytest.raises(Unauthenticated, match="expired"):
        await authenticator.authenticate(bearer(token))


async def test_a_revoked_token_is_unauthenticated(authenticator: Authenticator, store: FakeStore):
    token = await make_token(store)
    await revoke_token(store, token.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        await authenticator.authenticate(bearer(token))


async def test_a_token_is_read_once_within_the_cache_time(
    authenticator: Authenticator, store: FakeStore, clock: FakeClock
):
    token = await make_token(store)
    await authenticator.authenticate(bearer(token))
    clock.advance(CACHE_SECONDS - 1)
    await authenticator.authenticate(bearer(token))
    assert store.calls["find_token"] == 1


async def test_a_token_is_read_again_after_the_cache_time(
    authenticator: Authenticator, store: FakeStore, clock: FakeClock
):
    token = await make_token(store)
    await authenticator.authenticate(bearer(token))
    clock.advance(CACHE_SECONDS)
    await authenticator.authenticate(bearer(token))
    assert store.calls["find_token"] == 2


async def test_a_revocation_takes_effect_when_the_cached_token_expires(
    authenticator: Authenticator, store: FakeStore, clock: FakeClock
):
    token = await make_token(store)
    await authenticator.authenticate(bearer(token))
    await revoke_token(store, token.text)
    await authenticator.authenticate(bearer(token))  # still cached
    clock.advance(CACHE_SECONDS)
    with pytest.raises(Unauthenticated, match="revoked"):
        await authenticator.authenticate(bearer(token))


async def test_a_wrong_secret_is_refused_even_for_a_cached_token(
    authenticator: Authenticator, store: FakeStore
):
    token = await make_token(store)
    await authenticator.authenticate(bearer(token))
    with pytest.raises(Unauthenticated):
        await authenticator.authenticate(bearer(replace(token, secret="y" * len(token.secret))))


async def test_the_cache_is_emptied_when_full(store: FakeStore, clock: FakeClock):
    authenticator = Authenticator(store, CACHE_SECONDS, clock=clock, max_cached=1)
    first, second = await make_token(store), await make_token(store)
    for token in (first, second, first):
        await authenticator.authenticate(bearer(token))
    assert store.calls["find_token"] == 3


# --- create_token / revoke_token ------------------------------------------------------------


async def test_a_created_token_stores_only_the_hash_of_its_secret(store: FakeStore):
    token = await make_token(store, Role.VIEWER)
    stored = store.tokens[token.id]
    assert stored.secret_hash == hash_secret(token.secret)
    assert token.secret.encode() not in stored.secret_hash
    assert (stored.subject, stored.role, stored.folders) == ("alice", Role.VIEWER, FOLDERS)
    assert stored.revoked_at is None


async def test_a_token_without_a_lifetime_never_expires(store: FakeStore):
    token = await make_token(store)
    assert store.tokens[token.id].expires_at is None


async def test_a_token_with_a_lifetime_expires_after_it(store: FakeStore):
    before = utcnow()
    token = await make_token(store, expires_in=3600)
    expires_at = store.tokens[token.id].expires_at
    assert expires_at is not None
    assert before + timedelta(seconds=3600) <= expires_at <= utcnow() + timedelta(seconds=3600)


async def test_created_tokens_differ(store: FakeStore):
    first, second = await make_token(store), await make_token(store)
    assert first.id != second.id
    assert first.secret != second.secret


async def test_revoking_by_the_whole_token_returns_its_id(store: FakeStore):
    token = await make_token(store)
    assert await revoke_token(store, token.text) == token.id
    assert store.tokens[token.id].revoked_at is not None


async def test_revoking_twice_returns_none_the_second_time(store: FakeStore):
    token = await make_token(store)
    await revoke_token(store, token.id)
    assert await revoke_token(store, token.id) is None


async def test_revoking_an_unknown_token_returns_none(store: FakeStore):
    assert await revoke_token(store, "tok" + "0" * 17) is None
