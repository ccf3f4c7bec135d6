"""``python -m workers`` runs the worker pool (``service.entrypoints.worker``); its command
line (``--help``, one-line failures) is ``service.entrypoints.cli.workers``."""

from __future__ import annotations

from service.entrypoints.cli.workers import main

if __name__ == "__main__":
    main()
