"""``python -m workers`` runs the worker pool."""

from __future__ import annotations

from service import logs
from service.loop import run_loop
from service.settings import Settings
from workers.pool import run


def main() -> None:
    settings = Settings()
    logs.configure(settings.log_level, component="workers")
    run_loop(run(settings), settings.event_loop)


if __name__ == "__main__":
    main()
