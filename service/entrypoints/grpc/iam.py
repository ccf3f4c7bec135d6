"""IAM tokens: ``yandex.cloud.iam.v1.IamTokenService``.

``Create`` is answered without a token (``calls.PUBLIC_METHODS``), like endpoint discovery:
the official SDKs call it to exchange a JWT signed with a service account's authorized key
for the IAM token they then send on every call.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import timestamp_pb2

from service.domain.errors import FieldViolation, InvalidArgument, Unimplemented
from service.usecases.accounts import TokenExchange
from yandex.cloud.iam.v1 import iam_token_service_pb2 as iam_pb2
from yandex.cloud.iam.v1 import iam_token_service_pb2_grpc as iam_grpc

SDK_KEY_HINT = (
    "authenticate with a service account's authorized key (the SDK's service_account_key=, "
    "made by `python -m service sa key create`) or with a token of this service"
)


def source_of(peer: str) -> str:
    """The address part of a gRPC peer (``ipv4:1.2.3.4:5678``, ``ipv6:[::1]:5678``) or of a
    REST client's address: what the exchange's rate limit counts by."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return rest.rpartition(":")[0] or rest
    return peer


class IamTokenService(iam_grpc.IamTokenServiceServicer):
    def __init__(self, exchange: TokenExchange) -> None:
        self._exchange = exchange

    async def Create(
        self, request: iam_pb2.CreateIamTokenRequest, context: Any
    ) -> iam_pb2.CreateIamTokenResponse:
        identity = request.WhichOneof("identity")
        if identity == "yandex_passport_oauth_token":
            raise Unimplemented(f"OAuth tokens are not accepted by this service: {SDK_KEY_HINT}")
        if identity is None or not request.jwt:
            raise InvalidArgument(
                [FieldViolation("jwt", "is required: a JWT signed with a service account's key")]
            )
        issued = await self._exchange.create(request.jwt, source_of(context.peer()))
        expires_at = timestamp_pb2.Timestamp()
        expires_at.FromDatetime(issued.expires_at)
        return iam_pb2.CreateIamTokenResponse(iam_token=issued.text, expires_at=expires_at)

    async def CreateForServiceAccount(
        self, request: iam_pb2.CreateIamTokenForServiceAccountRequest, context: Any
    ) -> iam_pb2.CreateIamTokenResponse:
        raise Unimplemented(f"Impersonating a service account is not supported: {SDK_KEY_HINT}")

    async def Revoke(
        self, request: iam_pb2.RevokeIamTokenRequest, context: Any
    ) -> iam_pb2.RevokeIamTokenResponse:
        raise Unimplemented(
            "Revoking a single IAM token is not supported: revoke its key with "
            "`python -m service sa key revoke` (every token made with it stops at once)"
        )
