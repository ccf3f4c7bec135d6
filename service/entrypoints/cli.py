"""``python -m service token create|revoke``: API tokens for operators."""

from __future__ import annotations

import argparse
import sys

from service.adapters.store import wait_for_database
from service.authn import create_token
from service.domain.auth import Role
from service.settings import Settings


async def run_token_command(settings: Settings, args: argparse.Namespace) -> int:
    store = await wait_for_database(settings, deadline=10)
    try:
        if args.token_command == "create":
            token = await create_token(
                store, args.subject, Role(args.role), frozenset(args.folder), args.expires_in
            )
            print(f"token id: {token.id}")
            print(f"subject: {args.subject}  role: {args.role}  folders: {','.join(args.folder)}")
            print(token.text)  # the token alone on the last line; it is not stored anywhere
            return 0
        token_id = args.token.split(".", 1)[0]
        if await store.revoke_token(token_id):
            print(f"revoked {token_id}")
            return 0
        print(f"no active token {token_id}", file=sys.stderr)
        return 1
    finally:
        await store.close()
