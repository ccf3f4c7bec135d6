"""Streaming download of an image: MD5 and size computed chunk by chunk, in constant memory.

Every address the download connects to is checked against the network policy: host names
through a resolver that drops forbidden addresses (so DNS cannot point a name at the
workers' own network), IP literals before each request, and every redirect hop the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import socket
from typing import Any
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from service.domain.errors import DeadlineExceeded, InvalidArgument, ServiceError, Unavailable
from service.domain.errors import FieldViolation as _FieldViolation
from service.domain.network import NetworkPolicy
from service.usecases.ports import Downloaded

CHUNK = 256 * 1024
MAX_REDIRECTS = 5
# Answers that say "not now" rather than "never": retried like a 5xx.
_TRANSIENT_STATUSES = frozenset({408, 429})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class DownloadFailed(ServiceError):
    """The source answered, but not with an image we can take (a permanent failure)."""

    code = InvalidArgument.code


def _too_large(limit: int) -> DownloadFailed:
    return DownloadFailed(f"Image at uri exceeds the maximum size of {limit} bytes")


class PolicyResolver(AbstractResolver):
    """Resolves like the default resolver, minus the addresses the policy forbids."""

    def __init__(self, policy: NetworkPolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.allows(ipaddress.ip_address(r["host"]))]
        if not allowed:
            self._policy.check_address(ipaddress.ip_address(results[0]["host"]), host)
        return allowed

    async def close(self) -> None:
        await self._inner.close()


def _check_scheme(url: str) -> None:
    if urlsplit(url).scheme not in ("http", "https"):
        raise DownloadFailed("Image could not be downloaded: only http and https are allowed")


async def download_md5(
    uri: str,
    *,
    timeout: float,
    max_bytes: int,
    policy: NetworkPolicy,
    stall_timeout: float = 60.0,
) -> Downloaded:
    """Fetch ``uri`` and return its MD5 and size.

    Raises ``DownloadFailed`` for an answer that will not change on retry (4xx, too large,
    too many redirects), ``InvalidArgument`` for an address the policy forbids,
    ``Unavailable`` for a network failure, a 5xx, or a source that sends nothing for
    ``stall_timeout`` seconds; ``DeadlineExceeded`` past ``timeout``.
    """
    client_timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=stall_timeout, sock_read=stall_timeout
    )
    deadline = asyncio.timeout(timeout)
    connector = aiohttp.TCPConnector(resolver=PolicyResolver(policy), use_dns_cache=False)
    try:
        async with (
            deadline,
            aiohttp.ClientSession(
                timeout=client_timeout, auto_decompress=False, connector=connector
            ) as session,
        ):
            url = uri
            for _ in range(MAX_REDIRECTS + 1):
                _check_scheme(url)
                policy.check_url_host(url)
                async with session.get(url, allow_redirects=False) as response:
                    if response.status in _REDIRECTS and "Location" in response.headers:
                        url = urljoin(url, response.headers["Location"])
                        continue
                    return await _read(response, max_bytes)
            raise DownloadFailed("Image could not be downloaded from uri: too many redirects")
    except TimeoutError as exc:
        if deadline.expired():
            raise DeadlineExceeded(
                f"Image download did not finish within {timeout:g} seconds"
            ) from exc
        # aiohttp's connect and read time-outs are TimeoutErrors too: the source stalled.
        raise Unavailable(f"Image source stalled: {type(exc).__name__}") from exc
    except aiohttp.InvalidURL as exc:
        raise InvalidArgument([_FieldViolation("uri", "is not a valid URL")]) from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise Unavailable(f"Image source unreachable: {type(exc).__name__}") from exc


async def _read(response: Any, max_bytes: int) -> Downloaded:
    if response.status >= 500 or response.status in _TRANSIENT_STATUSES:
        raise Unavailable(f"Image source answered HTTP {response.status}")
    if response.status != 200:
        raise DownloadFailed(f"Image could not be downloaded from uri: HTTP {response.status}")
    if response.content_length is not None and response.content_length > max_bytes:
        raise _too_large(max_bytes)
    md5 = hashlib.md5(usedforsecurity=False)
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        md5.update(chunk)
    return Downloaded(md5=md5.hexdigest(), size=size)


class HttpDownloader:
    """``usecases.ports.Downloader`` over HTTP(S), within the configured limits and policy."""

    def __init__(
        self, policy: NetworkPolicy, *, timeout: float, max_bytes: int, stall_timeout: float
    ) -> None:
        self._policy = policy
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._stall_timeout = stall_timeout

    async def download(self, uri: str) -> Downloaded:
        return await download_md5(
            uri,
            timeout=self._timeout,
            max_bytes=self._max_bytes,
            policy=self._policy,
            stall_timeout=self._stall_timeout,
        )
