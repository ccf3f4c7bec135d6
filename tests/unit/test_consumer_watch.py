"""When a worker's consumer counts as lost (the broker holds messages it never receives)."""

from __future__ import annotations

import pytest

from service.adapters.rabbitmq import consumer_is_lost


@pytest.mark.parametrize(
    ("ready", "in_flight", "idle", "lost"),
    [
        (5, 0, 20.0, True),  # messages wait, room to spare, nothing for a while
        (5, 15, 20.0, True),  # one slot free is room enough
        (0, 0, 20.0, False),  # nothing to receive: idle is normal
        (5, 16, 20.0, False),  # full: the broker rightly holds the rest back
        (5, 0, 10.0, False),  # not idle long enough yet
    ],
)
def test_a_consumer_is_lost_only_when_ready_messages_pass_it_by(ready, in_flight, idle, lost):
    assert (
        consumer_is_lost(
            ready=ready, in_flight=in_flight, prefetch=16, idle_seconds=idle, stall_seconds=15
        )
        is lost
    )
