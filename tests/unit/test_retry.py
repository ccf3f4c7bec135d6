"""retrying(): stamina's backoff around a block, every retry counted and logged."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from itertools import pairwise

import pytest
import stamina
from structlog.testing import capture_logs

from service.domain.errors import NotFound, ServiceError, Unavailable
from service.runtime.retry import reset_retry_counts, retry_counts, retrying


@pytest.fixture(autouse=True)
def fresh_counts() -> Iterator[None]:
    reset_retry_counts()
    yield
    reset_retry_counts()


class Flaky:
    """Fails with the given errors, in order, then answers ``"ok"``; records when it was called."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[float] = []

    async def __call__(self) -> str:
        self.calls.append(time.monotonic())
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def call_with_retries(flaky: Flaky, name: str = "database.connect", **policy) -> str:
    async for attempt in retrying(name, **policy):
        with attempt:
            return await flaky()
    raise AssertionError("unreachable: retrying either succeeds or raises")


def gaps(times: list[float]) -> list[float]:
    return [later - earlier for earlier, later in pairwise(times)]


async def test_a_block_that_recovers_returns_its_result():
    flaky = Flaky(Unavailable("down"), Unavailable("down"))
    with stamina.set_testing(True, attempts=5):
        assert await call_with_retries(flaky, on=Unavailable) == "ok"
    assert len(flaky.calls) == 3


async def test_gives_up_after_attempts_and_reraises_the_last_error():
    flaky = Flaky(*(Unavailable(f"down {n}") for n in range(1, 10)))
    with pytest.raises(Unavailable, match="down 3"):
        await call_with_retries(flaky, on=Unavailable, attempts=3, wait_initial=0.001)
    assert len(flaky.calls) == 3


async def test_gives_up_after_timeout_and_reraises_the_last_error():
    flaky = Flaky(*(Unavailable("down") for _ in range(1000)))
    started = time.monotonic()
    with pytest.raises(Unavailable):
        await call_with_retries(
            flaky, on=Unavailable, timeout=0.05, wait_initial=0.01, wait_max=0.02
        )
    assert time.monotonic() - started >= 0.05
    assert 2 <= len(flaky.calls) < 100


async def test_without_attempts_or_timeout_it_retries_past_staminas_default_of_ten():
    flaky = Flaky(*(Unavailable("down") for _ in range(12)))
    assert await call_with_retries(flaky, on=Unavailable, wait_initial=0.001, wait_max=0.001)
    assert len(flaky.calls) == 13


async def test_an_error_it_is_not_told_to_retry_propagates_at_once():
    flaky = Flaky(ValueError("bug"))
    with pytest.raises(ValueError, match="bug"):
        await call_with_retries(flaky, on=Unavailable, attempts=5, wait_initial=0.001)
    assert len(flaky.calls) == 1
    assert retry_counts() == {}


async def test_a_predicate_chooses_which_errors_to_retry():
    def retryable(error: Exception) -> bool:
        return isinstance(error, ServiceError) and error.retryable

    flaky = Flaky(Unavailable("down"), NotFound("not retryable"))
    with stamina.set_testing(True, attempts=5), pytest.raises(NotFound, match="not retryable"):
        await call_with_retries(flaky, on=retryable)
    assert len(flaky.calls) == 2


async def test_cancellation_is_never_retried_even_if_the_predicate_says_yes():
    flaky = Flaky(asyncio.CancelledError())
    with stamina.set_testing(True, attempts=5), pytest.raises(asyncio.CancelledError):
        await call_with_retries(flaky, on=lambda error: True)
    assert len(flaky.calls) == 1


async def test_backoff_waits_stay_below_wait_max():
    # Uncapped, the fifth wait would be at least 0.01 * 2**4 = 0.16 s.
    flaky = Flaky(*(Unavailable("down") for _ in range(5)))
    await call_with_retries(flaky, on=Unavailable, wait_initial=0.01, wait_max=0.02)
    assert len(flaky.calls) == 6
    assert all(0.01 <= gap < 0.1 for gap in gaps(flaky.calls)), gaps(flaky.calls)


async def test_the_first_backoff_starts_from_wait_initial():
    # stamina's own default would wait at least 0.1 s.
    flaky = Flaky(Unavailable("down"))
    await call_with_retries(flaky, on=Unavailable, wait_initial=0.005, wait_max=5.0)
    [gap] = gaps(flaky.calls)
    assert 0.005 <= gap < 0.08


async def test_retries_are_counted_by_name_and_cause():
    with stamina.set_testing(True, attempts=5):
        await call_with_retries(
            Flaky(Unavailable("down"), TimeoutError(), Unavailable("down")),
            name="database.connect",
            on=(Unavailable, TimeoutError),
        )
        await call_with_retries(Flaky(Unavailable("down")), name="queue.connect", on=Unavailable)
    assert retry_counts() == {
        ("database.connect", "Unavailable"): 2,
        ("database.connect", "TimeoutError"): 1,
        ("queue.connect", "Unavailable"): 1,
    }


async def test_the_final_failure_is_not_counted_as_a_retry():
    with stamina.set_testing(True, attempts=3), pytest.raises(Unavailable):
        await call_with_retries(Flaky(*(Unavailable("down") for _ in range(5))), on=Unavailable)
    assert retry_counts() == {("database.connect", "Unavailable"): 2}


async def test_retry_counts_is_a_copy():
    with stamina.set_testing(True, attempts=5):
        await call_with_retries(Flaky(Unavailable("down")), on=Unavailable)
    retry_counts().clear()
    assert retry_counts() == {("database.connect", "Unavailable"): 1}


async def test_each_retry_is_logged_with_name_error_attempt_and_wait():
    flaky = Flaky(Unavailable("database is down"), TimeoutError("secret host 10.0.0.1"))
    with capture_logs() as logs:
        await call_with_retries(
            flaky, on=(Unavailable, TimeoutError), wait_initial=0.001, wait_max=0.002
        )
    retries = [entry for entry in logs if entry["event"] == "retry.scheduled"]
    assert [entry["log_level"] for entry in retries] == ["warning", "warning"]
    assert [entry["name"] for entry in retries] == ["database.connect"] * 2
    assert [entry["error"] for entry in retries] == [
        "Unavailable: database is down",
        "TimeoutError",
    ]
    assert [entry["attempt"] for entry in retries] == [1, 2]
    for entry in retries:
        assert entry["retry_in"] == round(entry["retry_in"], 2)
        assert 0 <= entry["retry_in"] < 0.1
