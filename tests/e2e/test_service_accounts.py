"""Service accounts through the real stack: the operator's ``sa`` commands, the token exchange
(``IamTokenService.Create``) with every way a JWT is refused, IAM tokens over gRPC and REST,
revocation at once, and the exchange's rate limit per client address."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.accounts import (
    exchange,
    make_key,
    make_service_account,
    sa_command,
    sign,
)
from tests.e2e.client import folder, rpc_error
from tests.e2e.rest import Rest, http_port
from tests.e2e.test_security import token_command
from tests.support import connect, eventually
from yandex.cloud.baremetal.v1alpha import image_service_pb2, image_service_pb2_grpc
from yandex.cloud.iam.v1 import iam_token_service_pb2 as iam_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc as iam_grpc

Code = grpc.StatusCode


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, object], claims: dict[str, object], secret: bytes) -> str:
    """A JWT signed HS256 by hand: PyJWT refuses a PEM as an HMAC secret, an attacker not."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


async def list_folder(address: str, token: str, folder_id: str) -> object:
    async with connect(address, token) as channel:
        stub = image_service_pb2_grpc.ImageServiceStub(channel)
        try:
            return await stub.List(
                image_service_pb2.ListImagesRequest(folder_id=folder_id), timeout=10
            )
        except grpc.aio.AioRpcError as exc:
            return exc


def test_sa_commands_make_list_and_delete_accounts_and_keys(database_url, tmp_path: Path):
    first = folder()
    account = make_service_account(database_url, first, role="viewer")
    listed = json.loads(sa_command(database_url, "list", "--format", "json").stdout)
    mine = next(a for a in listed if a["id"] == account)
    assert mine["role"] == "viewer"
    assert mine["folders"] == [first]
    assert mine["deleted"] is None

    taken = sa_command(database_url, "create", "--name", mine["name"], "--folder", first,
                       "--role", "editor")  # fmt: skip
    assert taken.returncode == 1
    assert "already exists" in taken.stderr

    path = tmp_path / "key.json"
    made = sa_command(database_url, "key", "create", account, "--output", str(path))
    assert made.returncode == 0, made.stderr
    assert path.stat().st_mode & 0o777 == 0o600
    key = json.loads(path.read_text())
    assert set(key) == {
        "id", "service_account_id", "created_at", "key_algorithm", "public_key", "private_key"
    }  # fmt: skip
    assert key["service_account_id"] == account
    assert key["key_algorithm"] == "RSA_2048"
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert key["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert key["private_key"] not in made.stdout

    keys = json.loads(sa_command(database_url, "key", "list", account, "--format", "json").stdout)
    assert [k["id"] for k in keys] == [key["id"]]
    assert keys[0]["revoked"] is None

    unknown = sa_command(database_url, "key", "create", "svanosuchaccount0000")
    assert unknown.returncode == 1
    assert "not found" in unknown.stderr

    assert sa_command(database_url, "delete", account).returncode == 0
    again = sa_command(database_url, "delete", account)
    assert again.returncode == 1
    listed = json.loads(sa_command(database_url, "list", "--format", "json").stdout)
    assert next(a for a in listed if a["id"] == account)["deleted"] is not None
    keys = json.loads(sa_command(database_url, "key", "list", account, "--format", "json").stdout)
    assert keys[0]["revoked"] is not None  # deleting the account revoked its key
    late = sa_command(database_url, "key", "create", account)
    assert late.returncode == 1


async def test_only_the_public_half_of_a_key_is_stored(database_url, db, tmp_path: Path):
    account = make_service_account(database_url, folder())
    key = make_key(database_url, account, tmp_path)
    row = await db.fetchrow("SELECT * FROM service_account_keys WHERE id = $1", key["id"])
    assert row["public_key"] == key["public_key"]
    stored = " ".join(str(value) for value in row.values())
    assert "PRIVATE" not in stored
    private_body = "".join(key["private_key"].splitlines()[1:-1])
    assert private_body[:64] not in stored.replace("\n", "")


async def test_an_iam_token_acts_as_its_service_account_in_its_folders(
    api, workers, blobs, database_url, tmp_path: Path
):
    mine, theirs = folder(), folder()
    account = make_service_account(database_url, mine)
    key = make_key(database_url, account, tmp_path)
    answer = await exchange(api.address, iam_pb2.CreateIamTokenRequest(jwt=sign(key, api.address)))
    assert isinstance(answer, iam_pb2.CreateIamTokenResponse), answer
    lifetime = answer.expires_at.seconds - time.time()
    assert 12 * 3600 - 60 < lifetime <= 12 * 3600  # IAM_TOKEN_LIFETIME_SECONDS' default

    async with connect(api.address, answer.iam_token) as channel:
        stub = image_service_pb2_grpc.ImageServiceStub(channel)
        created = await stub.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=mine, name="by-sa", uri=blobs.url("/blob/8")
            ),
            timeout=10,
        )
        assert created.created_by == account
        error = await rpc_error(
            stub.Create(
                image_service_pb2.CreateImageRequest(
                    folder_id=theirs, name="by-sa", uri=blobs.url("/blob/8")
                ),
                timeout=10,
            )
        )
        assert error.code() == Code.PERMISSION_DENIED
    error = await list_folder(api.address, answer.iam_token, theirs)
    assert isinstance(error, grpc.aio.AioRpcError)
    assert error.code() == Code.PERMISSION_DENIED


async def test_the_exchange_and_iam_tokens_over_rest(
    api, workers, http_session, database_url, tmp_path: Path
):
    mine = folder()
    account = make_service_account(database_url, mine, role="viewer")
    key = make_key(database_url, account, tmp_path)
    anonymous = Rest(http_session, http_port(api), None)
    answer = await anonymous.call("POST", "/iam/v1/tokens", {"jwt": sign(key, api.address)})
    assert answer.status == 200, answer.text
    body = answer.json
    assert set(body) == {"iamToken", "expiresAt"}
    as_account = anonymous.as_caller(body["iamToken"])
    assert (
        await as_account.call("GET", "/baremetal/v1alpha/images", params={"folderId": mine})
    ).status == 200
    refused = await as_account.call(
        "GET", "/baremetal/v1alpha/images", params={"folderId": folder()}
    )
    assert refused.status == 403

    bad = await anonymous.call("POST", "/iam/v1/tokens", {"jwt": "not.a.jwt"})
    assert bad.status == 401
    assert bad.json["message"].startswith("Malformed JWT")


async def test_every_flawed_jwt_is_unauthenticated_with_a_precise_message(
    api, database_url, tmp_path: Path
):
    address = api.address
    account = make_service_account(database_url, folder())
    key = make_key(database_url, account, tmp_path)
    other_account = make_service_account(database_url, folder())
    other_key = make_key(database_url, other_account, tmp_path)
    revoked_key = make_key(database_url, account, tmp_path)
    assert sa_command(database_url, "key", "revoke", revoked_key["id"]).returncode == 0
    deleted_account = make_service_account(database_url, folder())
    deleted_key = make_key(database_url, deleted_account, tmp_path)
    assert sa_command(database_url, "delete", deleted_account).returncode == 0
    now = int(time.time())
    header = {"typ": "JWT", "alg": "HS256", "kid": key["id"]}
    claims = {"iss": account, "aud": f"https://iam.{address}/iam/v1/tokens", "iat": now,
              "exp": now + 3600}  # fmt: skip
    good = sign(key, address)
    head, payload, signature = good.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]

    cases = {
        "signed with another key": (
            sign(key, address, signing_key=other_key["private_key"]),
            "JWT signature does not verify with the key its kid names",
        ),
        "signature altered": (f"{head}.{payload}.{flipped}", "JWT signature does not verify"),
        "claims altered": (
            f"{head}.{b64(json.dumps({**claims, 'iss': other_account}).encode())}.{signature}",
            "JWT signature does not verify",
        ),
        "alg none": (
            f"{b64(json.dumps({'alg': 'none', 'kid': key['id']}).encode())}.{payload}.",
            "JWT algorithm not accepted: sign with PS256",
        ),
        "HS256 with the public key as secret": (
            hand_made(header, claims, key["public_key"].encode()),
            "JWT algorithm not accepted: sign with PS256",
        ),
        "RS256": (
            sign(key, address, algorithm="RS256"),
            "JWT algorithm not accepted: sign with PS256",
        ),
        "no kid": (
            f"{b64(json.dumps({'alg': 'PS256'}).encode())}.{payload}.{signature}",
            "JWT header has no key ID (kid)",
        ),
        "unknown kid": (
            sign(key, address, headers={"kid": "keynosuchkey00000000"}),
            "Unknown key ID (kid)",
        ),
        "kid of another account": (
            sign(other_key, address, claims={"iss": account}),
            "JWT issuer (iss) is not the service account the key belongs to",
        ),
        "wrong aud": (
            sign(key, address, claims={"aud": "https://iam.api.cloud.yandex.net/iam/v1/tokens"}),
            f"JWT audience (aud) not accepted here: expected https://iam.{address}/iam/v1/tokens",
        ),
        "no aud": (sign(key, address, claims={"aud": None}), "JWT audience (aud) not accepted"),
        "expired": (
            sign(key, address, claims={"iat": now - 7200, "exp": now - 3600}),
            "JWT expired (exp)",
        ),
        "iat in the future": (
            sign(key, address, claims={"iat": now + 600, "exp": now + 1200}),
            "JWT not yet valid",
        ),
        "nbf in the future": (sign(key, address, claims={"nbf": now + 600}), "JWT not yet valid"),
        "lifetime over an hour": (
            sign(key, address, claims={"iat": now, "exp": now + 3601}),
            "JWT lifetime (exp - iat) over 3600 s",
        ),
        "no exp": (
            sign(key, address, claims={"exp": None}),
            "JWT must have the claims iat and exp",
        ),
        "exp not a number": (
            sign(key, address, claims={"exp": "tomorrow"}),
            "JWT claim exp must be a number",
        ),
        "revoked key": (sign(revoked_key, address), "The key is revoked"),
        "deleted account": (sign(deleted_key, address), "The service account is deleted"),
        "malformed": ("not-a-jwt", "Malformed JWT"),
        "four parts": (good + ".x", "Malformed JWT"),
        "bad base64": ("@@@.@@@.@@@", "Malformed JWT"),
        "oversized": (
            sign(key, address, claims={"pad": "x" * 9000}),
            "JWT too long: at most 8192 bytes",
        ),
    }
    secrets = {account, other_account, key["id"], other_key["id"], revoked_key["id"]}
    for name, (text, message) in cases.items():
        answer = await exchange(address, iam_pb2.CreateIamTokenRequest(jwt=text))
        assert isinstance(answer, grpc.aio.AioRpcError), name
        assert answer.code() == Code.UNAUTHENTICATED, (name, answer.code(), answer.details())
        assert answer.details().startswith(message), (name, answer.details())
        assert not any(s in answer.details() for s in secrets), (name, answer.details())

    # The genuine JWT still works: nothing above was refused for want of a working exchange.
    answer = await exchange(address, iam_pb2.CreateIamTokenRequest(jwt=good))
    assert isinstance(answer, iam_pb2.CreateIamTokenResponse), answer


async def test_what_the_exchange_does_not_serve_is_said(api):
    oauth = await exchange(
        api.address, iam_pb2.CreateIamTokenRequest(yandex_passport_oauth_token="y0_AgAAAA")
    )
    assert oauth.code() == Code.UNIMPLEMENTED
    assert "service account's authorized key" in oauth.details()
    empty = await exchange(api.address, iam_pb2.CreateIamTokenRequest())
    assert empty.code() == Code.INVALID_ARGUMENT
    violations = rpc_status.from_call(empty).details[0]
    bad_request = error_details_pb2.BadRequest()
    violations.Unpack(bad_request)
    assert [v.field for v in bad_request.field_violations] == ["jwt"]
    # The other methods of the service need credentials, and are not served.
    requests = {
        "CreateForServiceAccount": iam_pb2.CreateIamTokenForServiceAccountRequest(),
        "Revoke": iam_pb2.RevokeIamTokenRequest(iam_token="x"),
    }
    for name, request in requests.items():
        async with grpc.aio.insecure_channel(api.address) as channel:
            method = getattr(iam_grpc.IamTokenServiceStub(channel), name)
            error = await rpc_error(method(request, timeout=10))
            assert error.code() == Code.UNAUTHENTICATED, name
        async with connect(api.address) as channel:
            method = getattr(iam_grpc.IamTokenServiceStub(channel), name)
            error = await rpc_error(method(request, timeout=10))
            assert error.code() == Code.UNIMPLEMENTED, name


@pytest.mark.parametrize("how", ["key revoked", "account deleted", "token revoked"])
async def test_revoking_ends_an_iam_tokens_access_at_once_through_the_cache(
    how, processes, own_stack_env, database_url, tmp_path: Path
):
    """An API trusting a checked token for 10 minutes still refuses it within a second."""
    api = await processes.start("service", own_stack_env(AUTH_CACHE_SECONDS="600"), "api-revoke")
    mine = folder()
    account = make_service_account(database_url, mine)
    key = make_key(database_url, account, tmp_path)
    answer = await exchange(api.address, iam_pb2.CreateIamTokenRequest(jwt=sign(key, api.address)))
    token = answer.iam_token
    assert not isinstance(await list_folder(api.address, token, mine), grpc.aio.AioRpcError)
    if how == "key revoked":
        done = sa_command(database_url, "key", "revoke", key["id"])
    elif how == "account deleted":
        done = sa_command(database_url, "delete", account)
    else:
        done = token_command(database_url, "revoke", token)
    assert done.returncode == 0, done.stderr
    revoked_at = time.monotonic()

    async def refused() -> grpc.aio.AioRpcError | None:
        result = await list_folder(api.address, token, mine)
        return result if isinstance(result, grpc.aio.AioRpcError) else None

    error = await eventually(refused, timeout=5, what="the revoked token to be refused")
    assert time.monotonic() - revoked_at < 2.0
    assert error.code() == Code.UNAUTHENTICATED
    assert error.details() == "Token revoked"
    if how != "token revoked":  # and the key makes no new token
        again = await exchange(
            api.address, iam_pb2.CreateIamTokenRequest(jwt=sign(key, api.address))
        )
        assert again.code() == Code.UNAUTHENTICATED


async def test_the_exchange_is_rate_limited_per_client_address(
    processes, own_stack_env, database_url, admin_token, tmp_path: Path
):
    env = own_stack_env(IAM_TOKEN_EXCHANGES_PER_SECOND="0.1", IAM_TOKEN_EXCHANGE_BURST="3")
    api = await processes.start("service", env, "api-exchange-limit")
    account = make_service_account(database_url, folder())
    key = make_key(database_url, account, tmp_path)
    request = iam_pb2.CreateIamTokenRequest(jwt=sign(key, api.address))
    for _ in range(3):
        assert isinstance(await exchange(api.address, request), iam_pb2.CreateIamTokenResponse)
    # Flawed JWTs count too: guessing is limited as much as asking.
    limited = await exchange(api.address, iam_pb2.CreateIamTokenRequest(jwt="x.y.z"))
    assert limited.code() == Code.RESOURCE_EXHAUSTED
    details = rpc_status.from_call(limited).details
    retry = next(d for d in details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR))
    info = error_details_pb2.RetryInfo()
    retry.Unpack(info)
    assert info.retry_delay.seconds >= 1
    # Other calls from the same address are not affected.
    listed = await list_folder(api.address, admin_token, folder())
    assert not isinstance(listed, grpc.aio.AioRpcError)
