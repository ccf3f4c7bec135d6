"""``python -m service`` runs the API; ``python -m service migrate`` applies the migrations."""

from __future__ import annotations

import argparse
import asyncio

from service import logs
from service.loop import run_loop
from service.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("serve", help="run the gRPC API (the default)")
    commands.add_parser("migrate", help="create the database if needed and apply migrations")
    tokens = commands.add_parser("token", help="create or revoke API tokens").add_subparsers(
        dest="token_command", required=True
    )
    create = tokens.add_parser("create", help="print a new token (alone on the last line)")
    create.add_argument("--subject", required=True, help="the user or service account ID")
    create.add_argument(
        "--folder",
        action="append",
        required=True,
        help="a folder the token may act in (repeat for several; '*' for every folder)",
    )
    create.add_argument("--role", required=True, choices=["viewer", "editor"])
    create.add_argument("--expires-in", type=float, help="lifetime in seconds (default: none)")
    revoke = tokens.add_parser("revoke", help="revoke a token (by its ID or the whole token)")
    revoke.add_argument("token")
    args = parser.parse_args()
    settings = Settings()
    if args.command == "token":
        logs.configure(settings.log_level, component="token")
        from service.tokens import run_token_command

        raise SystemExit(asyncio.run(run_token_command(settings, args)))
    if args.command == "migrate":
        logs.configure(settings.log_level, component="migrate")
        from service.adapters.migrations import migrate

        migrate(str(settings.database_url))
        return
    if settings.api_processes > 1:
        from service.api.processes import run_processes

        raise SystemExit(run_processes(settings.api_processes))
    serve_api(settings)


def serve_api(settings: Settings) -> None:
    """One API process: its own event loop, pools and gRPC server."""
    logs.configure(settings.log_level, component="api")
    from service.api.server import serve

    run_loop(serve(settings), settings.event_loop)


if __name__ == "__main__":
    main()
