"""The project's one retry policy: stamina's exponential backoff with jitter, counted and logged.

Use it around a block::

    async for attempt in retrying("database.connect", on=Unavailable, timeout=60):
        with attempt:
            store = await connect(...)

Every retry is counted by ``(name, cause)`` (``retry_counts()`` and the metric
``image_service_retries_total``) and logged as the warning ``retry.scheduled``, all in
``_record_retry``.

Why the wrapper does the counting and not a stamina retry hook: stamina names every
``retry_context`` ``"<context block>"`` in the ``RetryDetails`` its hooks receive and has no
public way to give it another name, so a global hook could not tell ``database.connect`` from
``queue.connect``. The wrapper sees each attempt's exception and learns from stamina whether a
retry follows (stamina hands out another attempt) or not (it re-raises), so the stop rules stay
stamina's alone. The price: the event is written when the retry starts, after the backoff, and
``retry_in`` is the backoff that was waited.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterable, AsyncIterator, Callable
from types import TracebackType

import stamina
import structlog

from service.domain.errors import ServiceError
from service.runtime import metrics

log = structlog.get_logger(__name__)

RetryOn = type[Exception] | tuple[type[Exception], ...] | Callable[[Exception], bool]

_counts: Counter[tuple[str, str]] = Counter()


def retrying(
    name: str,
    *,
    on: RetryOn,
    timeout: float | None = None,
    attempts: int | None = None,
    wait_initial: float = 0.1,
    wait_max: float = 5.0,
) -> Retrying:
    """Attempts of a block, retried while it raises what ``on`` selects.

    ``on`` is an exception class, a tuple of them, or a predicate over the exception.
    ``timeout`` (seconds since the first attempt) and ``attempts`` bound the retries; with
    both ``None`` it retries forever (reconnect loops). Backoff grows exponentially from
    ``wait_initial`` with up to ``wait_initial`` of random jitter, never above ``wait_max``.
    When it gives up, the last exception propagates. Anything that is not an ``Exception``
    (cancellation, ``KeyboardInterrupt``) propagates at once, whatever ``on`` says.
    """
    context = stamina.retry_context(
        on=on,
        attempts=attempts,
        timeout=timeout,
        wait_initial=wait_initial,
        wait_max=wait_max,
        # stamina's default jitter (1 s) would swamp a small wait_initial; scale it instead.
        wait_jitter=wait_initial,
    )
    return Retrying(name, context, on)


class Retrying:
    """The async iterable ``retrying()`` returns; one per retried block, iterate it once."""

    def __init__(self, name: str, attempts: AsyncIterable[stamina.Attempt], on: RetryOn) -> None:
        self._name = name
        self._stamina = attempts
        self._on = on
        self._attempts: AsyncIterator[stamina.Attempt] | None = None
        self._failed: tuple[int, Exception] | None = None
        self._first: FirstAttempt | None = None

    def __aiter__(self) -> Retrying:
        return self

    async def __anext__(self) -> Attempt | FirstAttempt:
        if self._attempts is None:
            # The first attempt runs without stamina: on the success path (nearly every call,
            # and a worker retries each message's block) tenacity's bookkeeping per attempt
            # costs about as much as the work. Only a failure worth retrying starts stamina.
            if self._first is None:
                self._first = FirstAttempt(self._on)
                return self._first
            error = self._first.error
            if error is None:
                raise StopAsyncIteration
            # Started here, not in retrying(): stamina reads its test mode when iteration
            # starts. The first failure is replayed as stamina's own first attempt, so its
            # backoff, attempt count and time-out govern everything after.
            self._attempts = aiter(self._stamina)
            with await anext(self._attempts):
                raise error
            self._failed = (1, error)
        failed, self._failed = self._failed, None
        started = time.monotonic()
        # Raises the last exception when stamina gives up (or it is not one to retry), and
        # StopAsyncIteration after a successful attempt; otherwise waits the backoff first.
        attempt = await anext(self._attempts)
        if failed is not None:
            number, error = failed
            _record_retry(self._name, error, number, time.monotonic() - started)
        return Attempt(self, attempt)

    def _attempt_failed(self, number: int, error: Exception) -> None:
        self._failed = (number, error)


class FirstAttempt:
    """The first attempt of a block: lets an error ``on`` selects pass to ``Retrying``
    (which then retries under stamina), and anything else straight up."""

    num = 1

    def __init__(self, on: RetryOn) -> None:
        self._on = on
        self.error: Exception | None = None

    def __enter__(self) -> None:
        pass

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if isinstance(exc, Exception) and _selects(self._on, exc):
            self.error = exc
            return True
        return None


def _selects(on: RetryOn, error: Exception) -> bool:
    if isinstance(on, type | tuple):
        return isinstance(error, on)
    return bool(on(error))


class Attempt:
    """One attempt: a context manager around the block, as in ``with attempt: ...``."""

    def __init__(self, retrying: Retrying, attempt: stamina.Attempt) -> None:
        self._retrying = retrying
        self._attempt = attempt

    @property
    def num(self) -> int:
        """The number of this attempt, from 1."""
        return self._attempt.num

    def __enter__(self) -> None:
        self._attempt.__enter__()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        if exc is not None and not isinstance(exc, Exception):
            # stamina would swallow it here and leave a predicate ``on`` to decide whether to
            # retry a cancellation; it must go straight up instead.
            return None
        if isinstance(exc, Exception):
            self._retrying._attempt_failed(self.num, exc)
        return self._attempt.__exit__(exc_type, exc, traceback)


def _record_retry(name: str, error: Exception, attempt: int, waited: float) -> None:
    """Count and log one retry: the one place retries are observed."""
    cause = type(error).__name__
    _counts[(name, cause)] += 1
    metrics.retried(name, cause)
    log.warning(
        "retry.scheduled",
        name=name,
        error=f"{cause}: {error.message}" if isinstance(error, ServiceError) else cause,
        attempt=attempt,
        retry_in=round(waited, 2),
    )


def retry_counts() -> dict[tuple[str, str], int]:
    """Retries so far by ``(name, cause)``, cause being the exception's class name (a copy)."""
    return dict(_counts)


def reset_retry_counts() -> None:
    """Forget every count (for tests)."""
    _counts.clear()
