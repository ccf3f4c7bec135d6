"""``python -m workers`` runs the worker pool."""

from __future__ import annotations

import asyncio

from service import logs
from service.settings import Settings
from workers.pool import run


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, component="workers")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
