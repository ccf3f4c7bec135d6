"""``python -m service``: see ``service.entrypoints.cli.service``."""

from __future__ import annotations

from service.entrypoints.cli.service import main

if __name__ == "__main__":
    main()
