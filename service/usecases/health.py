"""Whether this process can do its whole job: the database answers, the broker is connected."""

from __future__ import annotations

import asyncio

from service.domain.errors import ServiceError
from service.usecases.ports import Pingable, Publisher


async def dependencies_ok(database: Pingable, broker: Publisher, timeout: float) -> bool:
    try:
        await asyncio.wait_for(database.ping(), timeout)
    except (ServiceError, TimeoutError):
        return False
    return broker.is_healthy()
