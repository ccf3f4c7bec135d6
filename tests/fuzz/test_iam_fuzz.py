"""Hostile JWTs at ``IamTokenService.Create``: random headers, claims and signatures, through
the real API. The property: every call is refused ``UNAUTHENTICATED`` (a JWT that does not
authenticate) or ``INVALID_ARGUMENT`` (no JWT at all) — never another code, never a token —
unless the case is, by chance, a genuine JWT of the test's key, which must then get a token.

The cases mix what an attacker controls: the header (``alg`` of every kind, ``kid`` real,
unknown or not a string, extra members), the claims (real, wrong, missing, of the wrong type,
huge or non-finite numbers), and the signature (a genuine PS256 one of the test's key over the
header and claims, one of another key, HMAC with the public key as the secret, random bytes,
none), and raw text that is not a JWT at all. Derandomized, like the other fuzz tests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections import Counter
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.accounts import audience, make_key, make_service_account
from tests.e2e.client import folder
from yandex.cloud.iam.v1 import iam_token_service_pb2 as iam_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc as iam_grpc

pytestmark = pytest.mark.fuzz

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=400,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
OUTCOMES: Counter[str] = Counter()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


class Target:
    """The test's service account and key, and everything a case is built from."""

    def __init__(self, address: str, key: dict[str, str]) -> None:
        self.address = address
        self.key = key
        self.private = serialization.load_pem_private_key(key["private_key"].encode(), None)
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def target(api: Any, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Target:
    account = make_service_account(database_url, folder())
    key = make_key(database_url, account, tmp_path_factory.mktemp("iam-fuzz"))
    return Target(api.address, key)


@st.composite
def jwts(draw: st.DrawFn, target: Target) -> tuple[str, bool]:
    """A JWT, and whether it is a genuine one of the target's key (so must be accepted)."""
    now = int(time.time())
    key = target.key
    header: dict[str, Any] = {
        "alg": draw(
            st.sampled_from(["PS256", "RS256", "HS256", "none", "ES256", "PS512", ""]) | JSON_VALUES
        ),
        "kid": draw(st.sampled_from([key["id"], "keynosuchkey00000000", ""]) | JSON_VALUES),
    }
    if draw(st.booleans()):
        header.update(
            draw(
                st.dictionaries(
                    st.sampled_from(["typ", "crit", "jku", "x5u", "cty", "zip"]),
                    JSON_VALUES,
                    max_size=3,
                )
            )
        )
    for name in draw(st.sets(st.sampled_from(["alg", "kid"]), max_size=1)):
        del header[name]
    good_times = {"iat": now, "exp": now + 3600}
    claims: dict[str, Any] = {
        "iss": draw(
            st.sampled_from([key["service_account_id"], "svanosuchaccount0000"]) | JSON_VALUES
        ),
        "aud": draw(
            st.sampled_from(
                [
                    audience(target.address),
                    audience("api.cloud.yandex.net"),
                    [audience(target.address)],
                ]
            )
            | JSON_VALUES
        ),
        "iat": draw(st.sampled_from([good_times["iat"], now + 3600, now - 7200]) | JSON_VALUES),
        "exp": draw(st.sampled_from([good_times["exp"], now - 10, now + 7200]) | JSON_VALUES),
    }
    if draw(st.booleans()):
        claims["nbf"] = draw(st.sampled_from([now, now + 600]) | JSON_VALUES)
    for name in draw(st.sets(st.sampled_from(["iss", "aud", "iat", "exp"]), max_size=2)):
        del claims[name]
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    how = draw(st.sampled_from(["genuine", "other key", "hmac", "random", "none"]))
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size)
    if how == "genuine":
        signature = target.private.sign(signing_input.encode(), pss, hashes.SHA256())
    elif how == "other key":
        signature = target.other.sign(signing_input.encode(), pss, hashes.SHA256())
    elif how == "hmac":
        signature = hmac.new(
            key["public_key"].encode(), signing_input.encode(), hashlib.sha256
        ).digest()
    elif how == "random":
        signature = draw(st.binary(max_size=300))
    else:
        signature = b""
    genuine = (
        how == "genuine"
        and header.get("alg") == "PS256"
        and header.get("kid") == key["id"]
        and claims.get("iss") == key["service_account_id"]
        and claims.get("aud") in (audience(target.address), [audience(target.address)])
        and claims.get("iat") == good_times["iat"]
        and claims.get("exp") == good_times["exp"]
        and claims.get("nbf", now) == now
    )
    return f"{signing_input}.{b64(signature)}", genuine


async def create(address: str, request: iam_pb2.CreateIamTokenRequest) -> Any:
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            return await iam_grpc.IamTokenServiceStub(channel).Create(request, timeout=10)
        except grpc.aio.AioRpcError as exc:
            return exc


REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT}


@FUZZ
@given(data=st.data())
async def test_a_hostile_jwt_is_refused_and_a_genuine_one_accepted(
    target: Target, data: st.DataObject
):
    kind = data.draw(st.sampled_from(["built", "built", "built", "text", "bytes"]))
    genuine = False
    if kind == "built":
        text, genuine = data.draw(jwts(target))
    elif kind == "text":
        text = data.draw(st.text(max_size=2000))
    else:
        raw = data.draw(st.binary(max_size=2000))
        text = ".".join(b64(part) for part in (raw[:10], raw[10:100], raw[100:]))
    answer = await create(target.address, iam_pb2.CreateIamTokenRequest(jwt=text))
    if isinstance(answer, grpc.aio.AioRpcError):
        OUTCOMES[answer.code().name] += 1
        assert not genuine, f"a genuine JWT was refused: {answer.details()}"
        assert answer.code() in REFUSED, (answer.code(), answer.details(), text[:200])
    else:
        OUTCOMES["OK"] += 1
        assert genuine, f"a token for a JWT that is not genuine: {text[:300]}"
        assert answer.iam_token


def test_z_the_fuzzing_reached_both_outcomes(capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\niam fuzz outcomes: {dict(OUTCOMES)}")
    assert OUTCOMES["UNAUTHENTICATED"] > 100
