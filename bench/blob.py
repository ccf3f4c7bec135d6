"""A file server for the benchmark's large Create: ``/gib/<n>`` streams n MiB, generated."""

from __future__ import annotations

import hashlib
import sys

from aiohttp import web

CHUNK = hashlib.sha256(b"bench").digest() * (1024 * 1024 // 32)  # 1 MiB


def expected_md5(mib: int) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    for _ in range(mib):
        md5.update(CHUNK)
    return md5.hexdigest()


async def _stream(request: web.Request) -> web.StreamResponse:
    mib = int(request.match_info["mib"])
    response = web.StreamResponse()
    response.content_length = mib * len(CHUNK)
    await response.prepare(request)
    for _ in range(mib):
        await response.write(CHUNK)
    await response.write_eof()
    return response


def main() -> None:
    app = web.Application()
    app.router.add_get("/gib/{mib}", _stream)
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    web.run_app(app, host="127.0.0.1", port=port, print=lambda text: print(text, flush=True))


if __name__ == "__main__":
    main()
