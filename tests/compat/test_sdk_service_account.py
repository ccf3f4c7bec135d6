"""The official Python SDK with ``service_account_key=``, unchanged, against the real stack
over TLS: a key made by ``python -m service sa key create``, endpoint discovery, the token
exchange (``IamTokenService.Create``) the SDK makes on its own, Create, Update, the SDK's
waiter and ``OperationService`` client, and List.

``sdk_key_client.py`` runs in the SDK's virtualenv; its ``run`` is the README's example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.accounts import make_key, make_service_account
from tests.compat.sdk_venv import run
from tests.e2e.client import folder
from tests.support import BlobServer, self_signed_certificate

pytestmark = pytest.mark.e2e

SDK_CLIENT = Path(__file__).resolve().parent / "sdk_key_client.py"


async def test_the_official_sdk_authenticates_with_a_service_account_key(
    public_python: Path,
    processes: Any,
    own_stack_env: Any,
    blobs: BlobServer,
    database_url: str,
    db: Any,
    tmp_path: Path,
) -> None:
    cert, tls_key = self_signed_certificate(tmp_path)
    env = own_stack_env(TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(tls_key))
    api = await processes.start("service", env, "api-sdk-key")
    await processes.start("workers", env, "workers-sdk-key")
    mine = folder()
    account = make_service_account(database_url, mine)
    key = make_key(database_url, account, tmp_path)
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(key))

    code, out, err = await run(
        public_python, "-I", SDK_CLIENT,
        "--endpoint", api.address,
        "--cert", cert,
        "--key-file", key_file,
        "--folder", mine,
        "--uri", blobs.url("/blob/4096"),
        timeout=180,
    )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(summary, indent=1))  # shown by pytest when an assertion below fails
    assert summary["ok"] is True, f"{summary}\n{err}"

    assert summary["created"]["status"] == "READY"
    assert summary["created"]["created_by"] == account
    assert summary["updated"]["description"] == "updated with a service account key"
    assert summary["updated"]["polled_done"] is True
    assert summary["updated"]["polled_created_by"] == account
    assert summary["listed"] == [summary["created"]["image_id"]]
    # Whole seconds, the clock read before the exchange: up to a second over.
    assert 12 * 3600 - 60 < summary["iam_token_expires_in"] <= 12 * 3600 + 1

    # Two exchanges with this key: the SDK's own (for its OperationService client and waiter)
    # and the README's (for the ImageService channel).
    made = await db.fetchval("SELECT count(*) FROM api_tokens WHERE key_id = $1", key["id"])
    assert made == 2
