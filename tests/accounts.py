"""Service accounts for tests, made as an operator makes them (``python -m service sa``), and
the JWTs the official SDK signs with their keys (``yandexcloud._auth_fabric``: PS256, ``kid``
the key's ID, ``iss`` the account, ``aud`` ``https://iam.<endpoint>/iam/v1/tokens``, one hour)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import jwt

from tests.support import ROOT, base_env
from yandex.cloud.iam.v1 import iam_token_service_pb2 as iam_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc as iam_grpc

RPC_TIMEOUT = 10.0


def sa_command(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m service sa ARGS`` against a database."""
    return subprocess.run(
        [sys.executable, "-m", "service", "sa", *args],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        check=False,
    )


def make_service_account(database_url: str, *folders: str, role: str = "editor") -> str:
    """A new service account's ID."""
    args = ["create", "--name", f"sa-{uuid.uuid4().hex[:10]}", "--role", role]
    for folder_id in folders:
        args += ["--folder", folder_id]
    result = sa_command(database_url, *args)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def make_key(database_url: str, account_id: str, directory: Path) -> dict[str, str]:
    """A new authorized key of the account, written by ``sa key create --output`` and read."""
    path = directory / f"key-{uuid.uuid4().hex[:8]}.json"
    result = sa_command(database_url, "key", "create", account_id, "--output", str(path))
    assert result.returncode == 0, result.stderr
    key: dict[str, str] = json.loads(path.read_text())
    return key


def audience(endpoint: str) -> str:
    return f"https://iam.{endpoint}/iam/v1/tokens"


def sign(
    key: dict[str, str],
    endpoint: str,
    *,
    claims: dict[str, Any] | None = None,
    headers: dict[str, Any] | None = None,
    signing_key: Any = None,
    algorithm: str = "PS256",
) -> str:
    """A JWT as the SDK makes it, with ``claims`` and ``headers`` changed or added (a value
    of ``None`` removes the claim)."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "iss": key["service_account_id"],
        "aud": audience(endpoint),
        "iat": now,
        "exp": now + 3600,
    }
    for name, value in (claims or {}).items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return jwt.encode(
        payload,
        key["private_key"] if signing_key is None else signing_key,
        algorithm=algorithm,
        headers={"kid": key["id"], **(headers or {})},
    )


async def exchange(address: str, request: iam_pb2.CreateIamTokenRequest) -> Any:
    """``IamTokenService.Create`` without credentials; the answer, or the ``AioRpcError``."""
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            return await iam_grpc.IamTokenServiceStub(channel).Create(request, timeout=RPC_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            return exc


async def iam_token(
    database_url: str, address: str, key_dir: Path, *folders: str, role: str = "editor"
) -> str:
    """An IAM token of a new service account of ``folders``, exchanged as the SDK does."""
    account = make_service_account(database_url, *folders, role=role)
    key = make_key(database_url, account, key_dir)
    answer = await exchange(address, iam_pb2.CreateIamTokenRequest(jwt=sign(key, address)))
    assert isinstance(answer, iam_pb2.CreateIamTokenResponse), answer
    return answer.iam_token
