"""The operator's service accounts: ``sa create|list|delete`` and ``sa key create|list|revoke``,
on the database directly, like ``token``.

A key's private half is written once, by ``sa key create``, in the authorized-key format the
official SDKs (``service_account_key=``) and the public CLI read; the database keeps the
public half only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from service.domain.auth import Role
from service.domain.errors import AlreadyExists, NotFound
from service.domain.model import utcnow
from service.entrypoints.cli.helptext import DATABASE_SETTINGS, SettingsGroup
from service.entrypoints.cli.output import format_option, print_rows
from service.entrypoints.cli.tokens import migrated_database, run_command
from service.runtime.settings import Settings
from service.usecases.accounts import create_key, create_service_account, list_keys


@click.group(cls=SettingsGroup, settings=DATABASE_SETTINGS)
def sa() -> None:
    """Service accounts: made here, they authenticate with authorized keys (sa key create),
    which the official SDKs exchange for IAM tokens (IamTokenService.Create)."""


@sa.command(settings=DATABASE_SETTINGS)
@click.option("--name", required=True, help="a name for people; unique among live accounts")
@click.option(
    "--folder",
    "folders",
    multiple=True,
    required=True,
    help="a folder the account may act in; repeat for several; '*' for every folder",
)
@click.option(
    "--role",
    required=True,
    type=click.Choice([role.value for role in Role]),
    help="viewer: read only; editor: also Create, Update, Delete and Cancel",
)
def create(name: str, folders: tuple[str, ...], role: str) -> None:
    """Make a service account and print its ID, alone on the last line."""

    async def work(settings: Settings) -> int:
        from service.adapters.postgres.accounts import PostgresServiceAccounts

        async with migrated_database(settings) as db:
            try:
                account = await create_service_account(
                    PostgresServiceAccounts(db), name, Role(role), frozenset(folders)
                )
            except AlreadyExists as exc:
                print(f"error: {exc.message}: {name}", file=sys.stderr)
                return 1
        click.echo(f"name: {name}  role: {role}  folders: {','.join(folders)}")
        click.echo(account.id)
        return 0

    raise SystemExit(run_command("sa", work))


@sa.command(name="list", settings=DATABASE_SETTINGS)
@format_option
def list_command(output_format: str) -> None:
    """List every service account, deleted ones too (with when)."""

    async def work(settings: Settings) -> None:
        from service.adapters.postgres.accounts import PostgresServiceAccounts

        async with migrated_database(settings) as db:
            accounts = await PostgresServiceAccounts(db).list_accounts()
        rows = [
            {
                "id": a.id,
                "name": a.name,
                "role": a.role.value,
                "folders": sorted(a.folders),
                "created": a.created_at,
                "deleted": a.deleted_at,
            }
            for a in accounts
        ]
        print_rows(rows, ("id", "name", "role", "folders", "created", "deleted"), output_format)

    run_command("sa", work)


@sa.command(settings=DATABASE_SETTINGS)
@click.argument("account_id", metavar="SERVICE_ACCOUNT_ID")
def delete(account_id: str) -> None:
    """Delete a service account: its keys are revoked and its IAM tokens refused at once."""

    async def work(settings: Settings) -> int:
        from service.adapters.postgres.accounts import PostgresServiceAccounts

        async with migrated_database(settings) as db:
            deleted = await PostgresServiceAccounts(db).delete_account(account_id)
        if deleted:
            click.echo(f"deleted {account_id}")
            return 0
        print(f"error: no live service account {account_id}", file=sys.stderr)
        return 1

    raise SystemExit(run_command("sa", work))


@sa.group(cls=SettingsGroup, settings=DATABASE_SETTINGS)
def key() -> None:
    """A service account's authorized keys (RSA 2048): create, list, revoke."""


@key.command(name="create", settings=DATABASE_SETTINGS)
@click.argument("account_id", metavar="SERVICE_ACCOUNT_ID")
@click.option(
    "--output",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="write the authorized key here (mode 0600)  [default: print it]",
)
@click.option("--description", default="", help="what the key is for")
def key_create(account_id: str, output: Path | None, description: str) -> None:
    """Make a key and write its authorized-key file (id, service_account_id, created_at,
    key_algorithm, public_key, private_key): the file the official SDKs take as
    service_account_key. The private key is shown once and stored nowhere."""

    async def work(settings: Settings) -> int:
        from service.adapters.postgres.accounts import PostgresServiceAccounts

        async with migrated_database(settings) as db:
            try:
                made = await create_key(PostgresServiceAccounts(db), account_id, description)
            except NotFound as exc:
                print(f"error: {exc.message}", file=sys.stderr)
                return 1
        text = json.dumps(made.authorized_key(utcnow()), indent=2) + "\n"
        if output is None:
            click.echo(text, nl=False)
            return 0
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(text)
        click.echo(f"key {made.key.id} of {account_id} written to {output}")
        return 0

    raise SystemExit(run_command("sa", work))


@key.command(name="list", settings=DATABASE_SETTINGS)
@click.argument("account_id", metavar="[SERVICE_ACCOUNT_ID]", required=False)
@format_option
def key_list(account_id: str | None, output_format: str) -> None:
    """List the keys of one service account, or of every one."""

    async def work(settings: Settings) -> None:
        from service.adapters.postgres.accounts import PostgresServiceAccounts

        async with migrated_database(settings) as db:
            keys = await list_keys(PostgresServiceAccounts(db), account_id)
        rows = [
            {
                "id": k.id,
                "service_account_id": k.service_account_id,
                "algorithm": k.key_algorithm,
                "description": k.description,
                "created": k.created_at,
                "revoked": k.revoked_at,
            }
            for k in keys
        ]
        columns = ("id", "service_account_id", "algorithm", "description", "created", "revoked")
        print_rows(rows, columns, output_format)

    run_command("sa", work)


@key.command(name="revoke", settings=DATABASE_SETTINGS)
@click.argument("key_id", metavar="KEY_ID")
def key_revoke(key_id: str) -> None:
    """Revoke a key: it makes no more IAM tokens, and those it made are refused at once."""

    async def work(settings: Settings) -> int:
        from service.adapters.postgres.accounts import PostgresServiceAccounts

        async with migrated_database(settings) as db:
            revoked = await PostgresServiceAccounts(db).revoke_key(key_id)
        if revoked:
            click.echo(f"revoked {key_id}")
            return 0
        print(f"error: no active key {key_id}", file=sys.stderr)
        return 1

    raise SystemExit(run_command("sa", work))
