"""TLS: with TLS_CERT_FILE and TLS_KEY_FILE the API speaks TLS only.

The certificate is self-signed, made by openssl for the test (subjectAltName IP:127.0.0.1 and
DNS:localhost); clients trust exactly that certificate.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.domain.ids import IMAGE_PREFIX, new_id
from tests.e2e.client import folder, response_image, rpc_error, unique, wait_done
from tests.support import ROOT, BearerAuth, base_env, eventually, self_signed_certificate
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2, image_service_pb2_grpc
from yandex.cloud.operation import operation_service_pb2_grpc


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost and its key."""
    return self_signed_certificate(tmp_path)


def tls_channel(address: str, cert: Path, token: str | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    interceptors = [BearerAuth(token)] if token else None
    return grpc.aio.secure_channel(address, credentials, interceptors=interceptors)


async def test_tls_serves_with_the_certificate_and_plaintext_is_refused(
    processes, own_stack_env, certificate, admin_token, blobs
):
    cert, key = certificate
    env = own_stack_env(TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    api = await processes.start("service", env, "api-tls")
    await processes.start("workers", env, "worker-tls")
    assert api.logged("api.started")[-1]["tls"] is True
    folder_id = folder()

    async with tls_channel(api.address, cert, admin_token) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        operations = operation_service_pb2_grpc.OperationServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert answer.status in (
            health_pb2.HealthCheckResponse.SERVING,
            health_pb2.HealthCheckResponse.NOT_SERVING,  # dependencies not checked yet
        )
        created = await images.Create(
            image_service_pb2.CreateImageRequest(
                folder_id=folder_id, name=unique("tls"), uri=blobs.url("/blob/8")
            )
        )
        image = response_image(await wait_done(operations, created.id))
        assert image.status == image_pb2.Image.READY
        listed = await images.List(image_service_pb2.ListImagesRequest(folder_id=folder_id))
        assert [i.id for i in listed.images] == [image.id]
        error = await rpc_error(
            images.Get(image_service_pb2.GetImageRequest(image_id=new_id(IMAGE_PREFIX)))
        )
        assert error.code() == grpc.StatusCode.NOT_FOUND

    # Over TLS, a call without a token is still refused.
    async with tls_channel(api.address, cert, None) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        error = await rpc_error(
            images.List(image_service_pb2.ListImagesRequest(folder_id=folder_id), timeout=10)
        )
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED

    # Plaintext is refused, for the API and for health alike.
    async with grpc.aio.insecure_channel(
        api.address, interceptors=[BearerAuth(admin_token)]
    ) as channel:
        images = image_service_pb2_grpc.ImageServiceStub(channel)
        error = await rpc_error(
            images.List(image_service_pb2.ListImagesRequest(folder_id=folder_id), timeout=10)
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE
        error = await rpc_error(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE

    # A client that does not trust the certificate cannot connect.
    async with grpc.aio.secure_channel(api.address, grpc.ssl_channel_credentials()) as channel:
        error = await rpc_error(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        )
        assert error.code() == grpc.StatusCode.UNAVAILABLE


def test_a_certificate_without_its_key_is_refused_at_start(certificate, database_url):
    cert, _ = certificate
    result = subprocess.run(
        [sys.executable, "-m", "service"],
        cwd=ROOT,
        env=base_env(DATABASE_URL=database_url, GRPC_LISTEN="127.0.0.1:0", TLS_CERT_FILE=str(cert)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "TLS_CERT_FILE and TLS_KEY_FILE must be set together" in result.stdout + result.stderr


def health_command(**env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "health", "--timeout", "5"],
        cwd=ROOT,
        env=base_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_the_health_command_checks_the_api_where_it_listens_with_tls(
    processes, own_stack_env, certificate
):
    """``python -m service health`` (the container healthcheck) dials the port GRPC_LISTEN
    binds, over TLS when TLS_CERT_FILE is set, whatever the port."""
    cert, key = certificate
    env = own_stack_env(TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    api = await processes.start("service", env, "api-health")
    port = api.address.rpartition(":")[2]
    listen = f"0.0.0.0:{port}"  # as in a container: dialled on the loopback address

    async def serving() -> bool:
        result = await asyncio.to_thread(
            health_command, GRPC_LISTEN=listen, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key)
        )
        return result.returncode == 0 and result.stdout.strip() == f"127.0.0.1:{port}: SERVING"

    await eventually(serving, timeout=30, interval=0.5, what="the health command to pass")

    plaintext = health_command(GRPC_LISTEN=listen)  # TLS not configured: refused by the API
    assert plaintext.returncode == 1
    assert plaintext.stderr.startswith(f"error: the API at 127.0.0.1:{port} did not answer")

    api.stop()
    gone = health_command(GRPC_LISTEN=listen, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    assert gone.returncode == 1
    assert "did not answer its health check: UNAVAILABLE" in gone.stderr


def test_the_health_command_needs_a_port_it_can_dial():
    result = health_command(GRPC_LISTEN="0.0.0.0:0")
    assert result.returncode == 1
    assert result.stderr.startswith("error: GRPC_LISTEN=0.0.0.0:0: the port is chosen at start")
