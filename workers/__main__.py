"""``python -m workers`` runs the worker pool (``service.entrypoints.worker``); its command
line (``--help``, one-line failures) is ``service.entrypoints.worker_cli``."""

from __future__ import annotations

from service.entrypoints.worker_cli import main

if __name__ == "__main__":
    main()
