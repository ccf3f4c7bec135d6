"""The sustained phase's open loop (bench.sustained.offer): Updates on schedule whatever became
of the earlier ones, at most a bound unfinished, and every scheduled Update either sent or
counted as not sent."""

from __future__ import annotations

import asyncio
import collections

from bench import sustained
from tests.support import eventually


def images(n: int) -> collections.deque[str]:
    return collections.deque(f"img{i}" for i in range(n))


async def test_a_stack_that_keeps_up_gets_every_scheduled_update():
    result = sustained.SustainedResult()

    async def done_at_once(due: float, image_id: str, pool: collections.deque[str]) -> None:
        pool.append(image_id)

    await sustained.offer(0.2, 100, 4, images(4), done_at_once, result)
    assert (result.scheduled, result.sent, result.not_sent) == (20, 20, 0)


async def test_a_load_generator_behind_its_schedule_still_sends_what_a_quick_stack_allows():
    """Twenty Updates due within 0.2 ms: the loop runs behind every due time, and the Updates
    finished meanwhile must hand their slots back before the bound is checked."""
    result = sustained.SustainedResult()

    async def done_at_once(due: float, image_id: str, pool: collections.deque[str]) -> None:
        pool.append(image_id)

    await sustained.offer(0.0002, 100_000, 4, images(4), done_at_once, result)
    assert (result.scheduled, result.sent, result.not_sent) == (20, 20, 0)


async def test_updates_beyond_the_bound_wait_and_those_still_waiting_at_the_end_are_counted():
    result = sustained.SustainedResult()
    release = asyncio.Event()
    started: list[float] = []

    async def stuck(due: float, image_id: str, pool: collections.deque[str]) -> None:
        started.append(due)
        await release.wait()

    offering = asyncio.create_task(sustained.offer(0.2, 100, 3, images(10), stuck, result))

    async def schedule_over() -> bool:
        return result.not_sent > 0

    await eventually(schedule_over, timeout=5, what="the schedule's end")
    release.set()
    await offering
    assert (result.scheduled, result.sent, result.not_sent) == (20, 3, 17)
    assert started == sorted(started)  # in order of their due times


async def test_an_update_sent_after_a_slot_frees_is_late_and_still_sent():
    result = sustained.SustainedResult()

    async def slow(due: float, image_id: str, pool: collections.deque[str]) -> None:
        await asyncio.sleep(0.05)
        pool.append(image_id)

    # 100/s with one slot and 50 ms per Update: the second onwards wait for the first.
    await sustained.offer(0.3, 100, 1, images(1), slow, result)
    assert result.sent + result.not_sent == result.scheduled == 30
    assert result.late >= result.sent - 1 > 0
    assert result.max_late_ms > sustained.LATE_SECONDS * 1000


async def test_a_follower_that_fails_outside_grpc_is_counted_not_lost():
    result = sustained.SustainedResult()

    async def broken(due: float, image_id: str, pool: collections.deque[str]) -> None:
        pool.append(image_id)
        raise RuntimeError("boom")

    await sustained.offer(0.05, 100, 2, images(2), broken, result)
    assert result.follow_errors == {"RuntimeError": result.sent}


def test_the_bound_is_half_a_second_of_the_rate_and_the_images_cover_it_twice():
    assert sustained.bound(400) == 200
    assert sustained.bound(10) == 16
    assert sustained.images_needed(800, 2) == 2 * 2 * (200 + 1)
