"""``python -m service`` runs the API; ``python -m service migrate`` applies the migrations."""

from __future__ import annotations

import argparse
import asyncio

from service import logs
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC API (the default)")
    commands.add_parser("migrate", help="create the database if needed and apply migrations")
    args = parser.parse_args()
    settings = Settings()
    if args.command == "migrate":
        logs.configure(settings.log_level, component="migrate")
        from service.adapters.migrations import migrate

        migrate(str(settings.database_url))
        return
    logs.configure(settings.log_level, component="api")
    from service.api.server import serve

    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
