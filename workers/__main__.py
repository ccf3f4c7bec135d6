"""``python -m workers`` runs the worker pool (``service.entrypoints.worker``)."""

from __future__ import annotations

from service.entrypoints.worker import main

if __name__ == "__main__":
    main()
