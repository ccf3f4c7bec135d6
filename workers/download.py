"""Streaming download of an image: MD5 and size computed chunk by chunk, in constant memory."""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass

import aiohttp

from service.domain.errors import DeadlineExceeded, InvalidArgument, ServiceError, Unavailable
from service.domain.errors import FieldViolation as _FieldViolation

CHUNK = 256 * 1024
# Answers that say "not now" rather than "never": retried like a 5xx.
_TRANSIENT_STATUSES = frozenset({408, 429})


@dataclass(frozen=True)
class Downloaded:
    md5: str
    size: int


class DownloadFailed(ServiceError):
    """The source answered, but not with an image we can take (a permanent failure)."""

    code = InvalidArgument.code


def _too_large(limit: int) -> DownloadFailed:
    return DownloadFailed(f"Image at uri exceeds the maximum size of {limit} bytes")


async def download_md5(
    uri: str, *, timeout: float, max_bytes: int, stall_timeout: float = 60.0
) -> Downloaded:
    """Fetch ``uri`` and return its MD5 and size.

    Raises ``DownloadFailed`` for an answer that will not change on retry (4xx, too large),
    ``Unavailable`` for a network failure, a 5xx, or a source that sends nothing for
    ``stall_timeout`` seconds; ``DeadlineExceeded`` past ``timeout``.
    """
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    client_timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=stall_timeout, sock_read=stall_timeout
    )
    deadline = asyncio.timeout(timeout)
    try:
        async with (
            deadline,
            aiohttp.ClientSession(timeout=client_timeout, auto_decompress=False) as session,
            session.get(uri, allow_redirects=True, max_redirects=5) as response,
        ):
            if response.status >= 500 or response.status in _TRANSIENT_STATUSES:
                raise Unavailable(f"Image source answered HTTP {response.status}")
            if response.status != 200:
                raise DownloadFailed(
                    f"Image could not be downloaded from uri: HTTP {response.status}"
                )
            if response.content_length is not None and response.content_length > max_bytes:
                raise _too_large(max_bytes)
            async for chunk in response.content.iter_chunked(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise _too_large(max_bytes)
                md5.update(chunk)
    except TimeoutError as exc:
        if deadline.expired():
            raise DeadlineExceeded(
                f"Image download did not finish within {timeout:g} seconds"
            ) from exc
        # aiohttp's connect and read time-outs are TimeoutErrors too: the source stalled.
        raise Unavailable(f"Image source stalled: {type(exc).__name__}") from exc
    except aiohttp.InvalidURL as exc:
        raise InvalidArgument([_FieldViolation("uri", "is not a valid URL")]) from exc
    except aiohttp.TooManyRedirects as exc:
        raise DownloadFailed("Image could not be downloaded from uri: too many redirects") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise Unavailable(f"Image source unreachable: {type(exc).__name__}") from exc
    return Downloaded(md5=md5.hexdigest(), size=size)
