"""``service.adapters.download.download_md5`` in-process against the test blob server.

MD5 and size of streamed bodies (with and without a Content-Length, through a redirect), the
size limit (declared and actual), the time limit, and how each failure of the source is
classified: a permanent ``DownloadFailed`` (``INVALID_ARGUMENT``), a retryable ``Unavailable``
or ``DeadlineExceeded``.
"""

from __future__ import annotations

import asyncio
import hashlib
import resource
import socket
import time
import uuid

import pytest

from service.adapters.download import CHUNK, DownloadFailed, download_md5
from service.domain.errors import Code, DeadlineExceeded, Unavailable
from service.domain.network import ForbiddenAddress, NetworkPolicy, parse_networks
from tests.support import BlobServer, blob, eventually, generated_chunks

# The blob server runs on loopback, which downloads may reach only when allowed.
LOOPBACK = NetworkPolicy(parse_networks("127.0.0.0/8"))

MiB = 1024 * 1024
LIMIT = 64 * MiB


def md5_of(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


async def download(uri: str, *, timeout: float = 5.0, max_bytes: int = LIMIT):
    return await download_md5(uri, timeout=timeout, max_bytes=max_bytes, policy=LOOPBACK)


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 12345],
)
async def test_md5_and_size_of_a_body_with_content_length(blobs: BlobServer, size: int):
    result = await download(blobs.url(f"/blob/{size}"))
    assert result.size == size
    assert result.md5 == md5_of(blob(size))


@pytest.mark.parametrize("size", [1, 5 * CHUNK + 7])
async def test_md5_and_size_of_a_chunked_body_without_content_length(blobs: BlobServer, size: int):
    result = await download(blobs.url(f"/chunked/{size}"))
    assert result.size == size
    assert result.md5 == md5_of(blob(size))


async def test_a_body_of_exactly_max_bytes_is_accepted(blobs: BlobServer):
    size = 2 * CHUNK + 3
    declared = await download(blobs.url(f"/blob/{size}"), max_bytes=size)
    chunked = await download(blobs.url(f"/chunked/{size}"), max_bytes=size)
    assert declared.size == chunked.size == size
    assert declared.md5 == chunked.md5 == md5_of(blob(size))


async def test_a_redirect_is_followed(blobs: BlobServer):
    size = 2 * CHUNK + 99
    result = await download(blobs.url(f"/redirect/{size}"))
    assert result.size == size
    assert result.md5 == md5_of(blob(size))


async def test_a_content_length_above_the_limit_is_refused(blobs: BlobServer):
    with pytest.raises(DownloadFailed) as failed:
        await download(blobs.url("/blob/1001"), max_bytes=1000)
    assert failed.value.code is Code.INVALID_ARGUMENT
    assert not failed.value.retryable
    assert "maximum" in failed.value.message
    assert "1000" in failed.value.message


async def test_a_declared_length_is_refused_before_the_body_is_read(blobs: BlobServer):
    # The server declares 10 GiB and sends 16 bytes: only the header check can end this before
    # the time limit (reading would wait for the rest and end in DeadlineExceeded).
    with pytest.raises(DownloadFailed) as failed:
        await download(blobs.url(f"/lying-length/{10 * 1024 * MiB}"), timeout=3, max_bytes=MiB)
    assert failed.value.code is Code.INVALID_ARGUMENT
    assert "maximum" in failed.value.message


async def test_a_chunked_body_growing_past_the_limit_is_refused_and_not_read_to_the_end(
    blobs: BlobServer,
):
    tag = uuid.uuid4().hex
    total = 4 * 1024 * MiB  # 4 GiB: reading it all would take far longer than the timeout
    started = time.monotonic()
    with pytest.raises(DownloadFailed) as failed:
        await download(blobs.url(f"/generated/{total}?tag={tag}"), timeout=5, max_bytes=MiB)
    assert time.monotonic() - started < 3
    assert failed.value.code is Code.INVALID_ARGUMENT
    assert "maximum" in failed.value.message

    async def server_stopped() -> bool:
        return tag in blobs.generated_done

    # The connection was closed: the server stops writing (what it wrote fits in buffers).
    await eventually(server_stopped, timeout=5, what="the server to stop streaming")
    assert blobs.generated_sent[tag] < 64 * MiB


async def test_a_stalled_download_ends_with_deadline_exceeded(blobs: BlobServer):
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded) as failed:
        await download(blobs.url("/slow/100000"), timeout=0.5)
    assert 0.4 < time.monotonic() - started < 2.5
    assert failed.value.code is Code.DEADLINE_EXCEEDED
    assert "0.5 seconds" in failed.value.message


async def test_a_trickling_download_ends_at_the_total_time_limit(blobs: BlobServer):
    # Bytes keep arriving (no read time-out fires): only the total limit ends it.
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await download(blobs.url("/trickle/100000"), timeout=0.5)
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("status", [400, 403, 404, 410])
async def test_a_4xx_answer_is_a_permanent_failure(blobs: BlobServer, status: int):
    with pytest.raises(DownloadFailed) as failed:
        await download(blobs.url(f"/status/{status}"))
    assert failed.value.code is Code.INVALID_ARGUMENT
    assert not failed.value.retryable
    assert str(status) in failed.value.message


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_a_5xx_answer_is_unavailable_and_retryable(blobs: BlobServer, status: int):
    with pytest.raises(Unavailable) as failed:
        await download(blobs.url(f"/status/{status}"))
    assert failed.value.code is Code.UNAVAILABLE
    assert failed.value.retryable
    assert str(status) in failed.value.message


async def test_a_refused_connection_is_unavailable_and_retryable():
    with pytest.raises(Unavailable) as failed:
        await download(f"http://127.0.0.1:{unused_port()}/image.bin")
    assert failed.value.code is Code.UNAVAILABLE
    assert failed.value.retryable


async def test_a_body_cut_short_is_unavailable(blobs: BlobServer):
    with pytest.raises(Unavailable) as failed:
        await download(blobs.url(f"/truncated/{3 * CHUNK}"))
    assert failed.value.retryable


async def test_a_redirect_loop_fails_for_good_without_hanging(blobs: BlobServer):
    with pytest.raises(DownloadFailed, match="too many redirects") as caught:
        await asyncio.wait_for(download(blobs.url("/redirect-loop")), 5)
    assert not caught.value.retryable


@pytest.mark.parametrize("status", [408, 429])
async def test_try_again_later_answers_are_transient(blobs: BlobServer, status: int):
    with pytest.raises(Unavailable) as caught:
        await download(blobs.url(f"/status/{status}"))
    assert caught.value.retryable


async def test_a_source_that_stalls_is_unavailable_not_a_deadline(blobs: BlobServer):
    with pytest.raises(Unavailable, match="stalled") as caught:
        await download_md5(
            blobs.url("/slow/1000"), timeout=30, max_bytes=10**6, stall_timeout=0.3, policy=LOOPBACK
        )
    assert caught.value.retryable


async def test_downloading_streams_in_constant_memory(blobs: BlobServer):
    """A 200 MiB body, generated chunk by chunk by the server, raises peak RSS by far less.

    ``ru_maxrss`` is this process's peak resident size (KiB on Linux). Buffering the body would
    raise the peak by at least its 200 MiB, unless an earlier test had already pushed the peak
    more than 200 MiB above the current size; then the peak does not move and the check passes
    vacuously (no earlier test in this suite comes near that). The blob server runs in this
    process too, so its side is checked as well.
    """
    size = 200 * MiB
    expected = hashlib.md5(usedforsecurity=False)
    for chunk in generated_chunks(size):
        expected.update(chunk)

    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = await download(
        blobs.url(f"/generated/{size}?tag={uuid.uuid4().hex}"), timeout=30, max_bytes=LIMIT * 4
    )
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kib) / 1024

    assert result.size == size
    assert result.md5 == expected.hexdigest()
    assert growth_mib < 60, f"peak RSS grew by {growth_mib:.0f} MiB"


# --- the network policy -------------------------------------------------------------------

STRICT = NetworkPolicy()


@pytest.mark.parametrize(
    "uri",
    [
        "http://127.0.0.1:{port}/blob/8",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/image",
        "http://192.168.0.1/image",
        "http://[::1]:{port}/blob/8",
        "http://[::ffff:127.0.0.1]:{port}/blob/8",
        "http://100.64.0.1/image",
        "http://0.0.0.0:{port}/blob/8",
    ],
)
async def test_addresses_outside_the_public_internet_are_refused(blobs: BlobServer, uri: str):
    with pytest.raises(ForbiddenAddress) as caught:
        await download_md5(uri.format(port=blobs.port), timeout=5, max_bytes=LIMIT, policy=STRICT)
    assert caught.value.violations[0].field == "uri"
    assert not caught.value.retryable


async def test_a_name_that_resolves_to_loopback_is_refused(blobs: BlobServer):
    with pytest.raises(ForbiddenAddress, match="localhost"):
        await download_md5(
            f"http://localhost:{blobs.port}/blob/8", timeout=5, max_bytes=LIMIT, policy=STRICT
        )


async def test_a_redirect_to_a_forbidden_address_is_refused(blobs: BlobServer):
    only_the_blob_server = NetworkPolicy(parse_networks("127.0.0.1/32"))
    target = f"http://127.0.0.2:{blobs.port}/blob/8"
    assert (
        await download_md5(
            blobs.url("/blob/8"), timeout=5, max_bytes=LIMIT, policy=only_the_blob_server
        )
    ).size == 8
    with pytest.raises(ForbiddenAddress, match=r"127\.0\.0\.2"):
        await download_md5(
            blobs.url(f"/redirect-to?url={target}"),
            timeout=5,
            max_bytes=LIMIT,
            policy=only_the_blob_server,
        )


async def test_only_http_and_https_are_followed(blobs: BlobServer):
    with pytest.raises(DownloadFailed, match="only http and https"):
        await download(blobs.url("/redirect-to?url=file:///etc/passwd"))
