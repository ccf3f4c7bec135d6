"""Per-subject rate limiting: a token bucket per caller, refilled continuously."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from service.domain.errors import ResourceExhausted
from service.runtime.lru import Lru


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """``rate`` calls per second per subject on average, bursts of up to ``burst``.

    Buckets of subjects not seen for a while are dropped (least recently used first), so
    memory stays bounded whatever the number of callers.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_subjects: int = 100_000,
    ) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._buckets: Lru[str, _Bucket] = Lru(max_subjects)

    def acquire(self, subject: str) -> None:
        """Take one call from the subject's bucket, or raise ``ResourceExhausted``."""
        now = self._clock()
        bucket = self._buckets.get(subject)
        if bucket is None:
            bucket = _Bucket(tokens=self._burst, updated=now)
            self._buckets.put(subject, bucket)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.updated) * self._rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self._rate
            raise ResourceExhausted(
                f"Rate limit of {self._rate:g} calls per second exceeded; retry later",
                retry_after=wait,
            )
        bucket.tokens -= 1.0
