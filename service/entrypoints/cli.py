"""``python -m service``: the API (default), ``migrate``, and ``token create|revoke``."""

from __future__ import annotations

import argparse
import asyncio
import sys

from service.runtime import logs
from service.runtime.settings import Settings

# The token commands wait this long for the database, not the API's minute.
TOKEN_DATABASE_DEADLINE_SECONDS = 10.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Runs the gRPC API (the default), applies migrations, or manages tokens.",
    )
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
    create.add_argument(
        "--role", required=True, choices=["viewer", "editor"], help="what the token may do"
    )
    create.add_argument("--expires-in", type=float, help="lifetime in seconds (default: none)")
    revoke = tokens.add_parser("revoke", help="revoke a token (by its ID or the whole token)")
    revoke.add_argument("token")
    return parser


async def _token_command(settings: Settings, args: argparse.Namespace) -> int:
    from service.adapters.postgres import Postgres
    from service.domain.auth import Role
    from service.usecases.auth import create_token, revoke_token

    postgres = await Postgres.connect(settings, deadline=TOKEN_DATABASE_DEADLINE_SECONDS)
    try:
        if args.token_command == "create":
            token = await create_token(
                postgres.tokens,
                args.subject,
                Role(args.role),
                frozenset(args.folder),
                args.expires_in,
            )
            print(f"token id: {token.id}")
            print(f"subject: {args.subject}  role: {args.role}  folders: {','.join(args.folder)}")
            print(token.text)  # the token alone on the last line; it is not stored anywhere
            return 0
        revoked = await revoke_token(postgres.tokens, args.token)
        if revoked is not None:
            print(f"revoked {revoked}")
            return 0
        print(f"no active token {args.token.split('.', 1)[0]}", file=sys.stderr)
        return 1
    finally:
        await postgres.close()


def main() -> None:
    args = _parser().parse_args()
    settings = Settings()
    if args.command == "token":
        logs.configure(settings.log_level, component="token")
        raise SystemExit(asyncio.run(_token_command(settings, args)))
    if args.command == "migrate":
        logs.configure(settings.log_level, component="migrate")
        from service.adapters.postgres.migrations import MigrationsNotFoundError, migrate

        try:
            migrate(str(settings.database_url))
        except MigrationsNotFoundError as exc:
            raise SystemExit(f"migrate: {exc}") from None
        return
    if settings.api_processes > 1:
        from service.entrypoints.grpc.processes import run_processes

        raise SystemExit(run_processes(settings.api_processes))
    from service.entrypoints.grpc.server import serve_api

    serve_api(settings)
