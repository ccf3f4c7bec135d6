"""``python -m service``: see ``service.entrypoints.cli``."""

from __future__ import annotations

from service.entrypoints.cli import main

if __name__ == "__main__":
    main()
