"""Hostile input on the REST surface: property-based fuzzing of the HTTP API of the running
stack (``HTTP_LISTEN``), with Hypothesis.

Random methods, paths (the API's own templates with hostile segments, and raw paths with
percent-escapes, dots, verbs and non-ASCII), query strings, headers (tokens good and bad,
idempotency keys, client IDs, content types) and bodies (JSON of the request fields with values
of every type, and raw bytes) are sent through a real HTTP client; a last test writes raw
request bytes to the socket, past what a client would send. The property, for every case:

- the answer is never a 5xx but 503 (a dependency away), and never carries a traceback;
- an answer of ours is JSON with ``X-Request-Id``; an error is ``{"code", "message",
  "details"}`` whose HTTP status is its code's, with a ``RequestInfo`` of that request ID;
- only a request aiohttp cannot parse as HTTP gets its own (plain text) 400.

After the fuzzing, the API logged no failure (``rpc.failed``, ``http.failed``) and is alive.
Derandomized like ``test_fuzz.py`` (``FUZZ_RANDOM=1`` explores, ``FUZZ_SCALE`` multiplies).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from typing import Any, ClassVar
from urllib.parse import quote, urlencode

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from service.domain.ids import IMAGE_PREFIX, OPERATION_PREFIX, new_id
from service.entrypoints.http.responses import http_status
from tests import support
from tests.e2e.client import create_ready_image
from tests.e2e.rest import http_port
from yandex.cloud.baremetal.v1alpha import image_service_pb2

pytestmark = pytest.mark.e2e

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
RANDOM = os.environ.get("FUZZ_RANDOM") == "1"
FOLDERS = ("rest-fuzz-a", "rest-fuzz-b")
FUZZ = settings(
    deadline=None,
    derandomize=not RANDOM,
    database=None,
    print_blob=RANDOM,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CASES: Counter[str] = Counter()
STATUSES: Counter[int] = Counter()
TRACEBACK_MARKERS = ("Traceback", 'File "', "site-packages")
PAGE_TYPES = ("text/html", "text/css", "text/javascript")


def examples(n: int) -> int:
    return max(1, round(n * SCALE))


class Targets:
    """What the cases aim at: IDs that exist, in folders the fuzz tokens may act in."""

    image_ids: ClassVar[list[str]] = []
    operation_ids: ClassVar[list[str]] = []
    tokens: ClassVar[dict[str, str]] = {}
    blob_uri: ClassVar[list[str]] = []


@pytest.fixture(scope="module")
async def base(api, workers, images, operations, blobs, database_url) -> str:
    editor = support.create_token(
        database_url, "--subject", "rest-fuzz-editor", "--folder", FOLDERS[0], "--role", "editor"
    )
    viewer = support.create_token(
        database_url, "--subject", "rest-fuzz-viewer", "--folder", FOLDERS[0], "--role", "viewer"
    )
    assert support.ADMIN_TOKEN
    Targets.tokens = {"admin": support.ADMIN_TOKEN, "editor": editor, "viewer": viewer}
    Targets.blob_uri.append(blobs.url("/blob/8"))
    for folder_id in FOLDERS:
        image = await create_ready_image(images, operations, blobs.url("/blob/8"), folder_id)
        Targets.image_ids.append(image.id)
        listed = await images.ListOperations(
            image_service_pb2.ListImageOperationsRequest(image_id=image.id)
        )
        Targets.operation_ids.extend(operation.id for operation in listed.operations)
    return f"http://127.0.0.1:{http_port(api)}"


# --- strategies ---------------------------------------------------------------------------------

PRINTABLE = st.characters(min_codepoint=0x20, max_codepoint=0x7E)
ANY_TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
SEGMENT = st.one_of(
    st.sampled_from(["", ".", "..", "%2F", "%00", "%ZZ", "%", "a%20b", ":cancel", ":wait", "*"]),
    st.builds(lambda: new_id(IMAGE_PREFIX)),
    st.builds(lambda: new_id(OPERATION_PREFIX)),
    st.sampled_from(["img" + "a" * 17, "opn" + "a" * 17, "x" * 300]),
    ANY_TEXT.map(lambda text: quote(text, safe="")),
    st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: c not in "?#"),
        max_size=20,
    ),
)
TEMPLATES = [
    "/baremetal/v1alpha/images",
    "/baremetal/v1alpha/images/{}",
    "/baremetal/v1alpha/images/{}/operations",
    "/operations/{}",
    "/operations/{}:cancel",
    "/operations/{}:wait",
    "/console/api/folders/{}/operations",
    "/console{}",
]


@st.composite
def paths(draw: Any) -> str:
    if draw(st.booleans()):
        template = draw(st.sampled_from(TEMPLATES))
        segment = draw(st.one_of(SEGMENT, st.sampled_from(Targets.image_ids or ["x"])))
        return template.replace("{}", segment)
    segments = draw(st.lists(SEGMENT, max_size=6))
    return "/" + "/".join(segments)


QUERY_KEYS = st.sampled_from(
    ["folderId", "folder_id", "pageSize", "pageToken", "filter", "orderBy", "timeout", "imageId",
     "operationId", "name", "labels", "updateMask", "page_size.x", ""]
)  # fmt: skip
QUERY_VALUES = st.one_of(
    st.sampled_from([*FOLDERS, "0", "-1", "1001", "20", "1e3", "30s", "-5s", "99999999999s",
                     'name="x"', "name desc", "createdAt", "true"]),
    ANY_TEXT,
)  # fmt: skip
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(ANY_TEXT, children, max_size=3)
    ),
    max_leaves=8,
)
BODY_KEYS = st.sampled_from(
    ["folderId", "folder_id", "name", "description", "uri", "labels", "updateMask", "imageId",
     "pageSize", "x"]
)  # fmt: skip
GOOD_VALUES = st.sampled_from(
    [FOLDERS[0], "fuzz-name", "a description", "http://127.0.0.1:1/x", {"k": "v"}, {},
     "description", "name,labels", "*", ""]
)  # fmt: skip
BODIES = st.one_of(
    st.none(),
    st.binary(max_size=200),
    st.dictionaries(BODY_KEYS | ANY_TEXT, GOOD_VALUES | JSON_VALUES, max_size=6).map(
        lambda body: json.dumps(body).encode()
    ),
    JSON_VALUES.map(lambda value: json.dumps(value).encode()),
)
AUTHORIZATION = st.one_of(
    st.sampled_from(["admin", "editor", "viewer"]).map(lambda who: f"Bearer {Targets.tokens[who]}"),
    st.sampled_from(["", "Bearer", "Basic x", "Bearer tok.x", "bearer " + "A" * 5000]),
    st.text(PRINTABLE, max_size=60),
    st.none(),
)
HEADER_VALUES = st.text(PRINTABLE, max_size=60)
HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "Idempotency-Key": HEADER_VALUES,
        "X-Client-Request-Id": HEADER_VALUES,
        "X-Client-Trace-Id": HEADER_VALUES,
        "Content-Type": st.sampled_from(["application/json", "text/plain", "", "multipart/x"]),
        "traceparent": HEADER_VALUES,
        "Accept": HEADER_VALUES,
    },
)
METHODS = st.one_of(
    st.sampled_from(["GET", "POST", "PATCH", "DELETE", "PUT", "HEAD", "OPTIONS"]),
    # CONNECT would make the client open a tunnel instead of sending a request.
    st.from_regex(r"[A-Z]{1,8}", fullmatch=True).filter(lambda m: m != "CONNECT"),
)


# --- the property -------------------------------------------------------------------------------


def check_answer(status: int, headers: Any, text: str, where: str) -> None:
    STATUSES[status] += 1
    assert status < 500 or status == 503, f"{status}: {text[:500]}" + where
    assert not any(marker in text for marker in TRACEBACK_MARKERS), text[:1000] + where
    content_type = headers.get("Content-Type", "")
    if status == 302:
        assert headers.get("Location") == "/console", where  # GET / leads to the console
        return
    if content_type.startswith(PAGE_TYPES):
        assert status == 200, where  # the console's own files
        return
    if not content_type.startswith("application/json"):
        # aiohttp's own answer to a request it could not parse as HTTP at all.
        assert status == 400, f"{status} {content_type}: {text[:300]}" + where
        return
    request_id = headers.get("X-Request-Id")
    assert request_id, "no X-Request-Id" + where
    if status == 200 or not text:  # a success, or the answer to a HEAD
        return
    body = json.loads(text)
    assert set(body) == {"code", "message", "details"}, text[:500] + where
    assert status == http_status(body["code"]) or (status, body["code"]) == (405, 12), where
    infos = [d for d in body["details"] if d["@type"].endswith("/google.rpc.RequestInfo")]
    assert [info["requestId"] for info in infos] == [request_id], where


async def send(
    session: Any, base: str, method: str, path: str, query: Any, headers: Any, body: Any
) -> None:
    url = URL(base + path + (f"?{urlencode(query)}" if query else ""), encoded=True)
    where = f"\n  {method} {path} ?{query} {headers} body={body!r:.300}"
    async with session.request(
        method, url, data=body, headers=headers, allow_redirects=False
    ) as response:
        text = await response.text(errors="replace")
        check_answer(response.status, response.headers, text, where)


@settings(FUZZ, max_examples=examples(350))
@given(
    method=METHODS,
    path=paths(),
    query=st.lists(st.tuples(QUERY_KEYS | ANY_TEXT, QUERY_VALUES), max_size=4),
    authorization=AUTHORIZATION,
    headers=HEADERS,
    body=BODIES,
)
async def test_any_request_is_answered_in_json_without_a_5xx(
    base, http_session, method, path, query, authorization, headers, body
):
    CASES["requests"] += 1
    if authorization is not None:
        headers = {**headers, "Authorization": authorization}
    await send(http_session, base, method, path, query, headers, body)


# Values a valid request would carry, and near misses, by field; ``hostile`` overrides some.
PLAUSIBLE = {
    "folderId": st.sampled_from([*FOLDERS, "", "Bad Folder", "x" * 51]),
    "name": st.from_regex(r"[a-z][-a-z0-9]{0,12}[a-z0-9]", fullmatch=True)
    | st.sampled_from(["n", "Bad_Name", "fuzz-taken"]),
    "description": ANY_TEXT,
    "uri": st.builds(lambda: Targets.blob_uri[0]) | st.sampled_from(["ftp://h/x", "", "x"]),
    "labels": st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9]{0,4}", fullmatch=True) | ANY_TEXT,
        st.from_regex(r"[a-z0-9]{0,4}", fullmatch=True) | ANY_TEXT,
        max_size=3,
    ),
    "updateMask": st.sampled_from(["description", "name,labels", "*", "", "status", "a.b"]),
    "pageSize": st.integers(-5, 1005).map(str) | st.sampled_from(["", "x", "1e2"]),
    "pageToken": st.sampled_from(["", "garbage", "eyJ9"]),
    "filter": st.sampled_from(['name="x"', "name:'fuzz'", "id=", "status=1", ""]) | ANY_TEXT,
    "orderBy": st.sampled_from(["name", "id desc", "createdAt asc", "size", ""]),
    "timeout": st.sampled_from(["0s", "0.2s", "-1s", "1e3s", "bad", ""]),
}
ROUTES = [
    ("POST", "/baremetal/v1alpha/images", ("folderId", "name", "description", "uri", "labels")),
    ("PATCH", "/baremetal/v1alpha/images/{image}", ("updateMask", "name", "description", "labels")),
    (
        "GET",
        "/baremetal/v1alpha/images",
        ("folderId", "pageSize", "pageToken", "filter", "orderBy"),
    ),
    ("GET", "/baremetal/v1alpha/images/{image}/operations", ("pageSize", "pageToken")),
    ("DELETE", "/baremetal/v1alpha/images/{missing}", ()),  # the targets stay
    ("GET", "/operations/{operation}:wait", ("timeout",)),
    ("POST", "/operations/{operation}:cancel", ()),
    ("GET", "/console/api/folders/{folder}/operations", ("pageSize",)),
]


@st.composite
def requests_of_valid_callers(draw: Any) -> tuple[str, str, dict[str, Any]]:
    method, path, names = draw(st.sampled_from(ROUTES))
    fields = {
        name: draw(PLAUSIBLE[name])
        for name in names
        if draw(st.integers(0, 3))  # mostly given
    }
    if draw(st.integers(0, 2)) == 0:
        fields.update(draw(st.dictionaries(BODY_KEYS, JSON_VALUES, max_size=2)))  # hostile
    path = path.format(
        image=draw(st.sampled_from(Targets.image_ids)),
        missing=new_id(IMAGE_PREFIX),
        operation=draw(st.sampled_from(Targets.operation_ids)),
        folder=draw(st.sampled_from(FOLDERS)),
    )
    return method, path, fields


@settings(FUZZ, max_examples=examples(250))
@given(
    request=requests_of_valid_callers(),
    who=st.sampled_from(["admin", "editor", "viewer"]),
    key=st.none() | st.sampled_from(["k1", "k2"]),
)
async def test_requests_of_valid_callers_with_hostile_fields(base, http_session, request, who, key):
    """Valid tokens and routes, so the cases reach the decoding and the use cases."""
    CASES["fields"] += 1
    method, path, fields = request
    headers = {"Authorization": f"Bearer {Targets.tokens[who]}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if method in ("POST", "PATCH") and not path.endswith(":cancel"):
        await send(http_session, base, method, path, None, headers, json.dumps(fields).encode())
    else:
        query = [(k, v if isinstance(v, str) else json.dumps(v)) for k, v in fields.items()]
        await send(http_session, base, method, path, query, headers, None)


@settings(FUZZ, max_examples=examples(200))
@given(
    method=st.binary(min_size=1, max_size=10) | METHODS.map(str.encode),
    target=st.binary(max_size=80) | paths().map(str.encode),
    header_lines=st.lists(st.binary(max_size=60), max_size=3),
    body=st.binary(max_size=100),
)
async def test_raw_bytes_on_the_socket_never_get_a_5xx(base, method, target, header_lines, body):
    CASES["raw"] += 1
    host, port = base.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        request = method + b" " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        request += b"".join(line + b"\r\n" for line in header_lines)
        request += b"Content-Length: %d\r\n\r\n" % len(body) + body
        writer.write(request)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=20)
    finally:
        writer.close()
    if not answer:
        return  # the server closed a connection it could not read a request from
    status_line, _, rest = answer.partition(b"\r\n")
    parts = status_line.split(b" ")
    assert parts[0] in (b"HTTP/1.0", b"HTTP/1.1"), answer[:200]
    status = int(parts[1])
    head, _, text = rest.partition(b"\r\n\r\n")
    headers = {
        k.decode(errors="replace"): v.decode(errors="replace").strip()
        for k, _, v in (line.partition(b":") for line in head.split(b"\r\n"))
    }
    check_answer(status, headers, text.decode(errors="replace"), f"\n  raw {request[:300]!r}")


def test_zz_the_api_logged_no_failure_and_is_alive(api, capsys):
    failures = api.logged("rpc.failed") + api.logged("http.failed")
    assert failures == [], failures[:3]
    assert api.proc is not None
    assert api.proc.poll() is None
    with capsys.disabled():
        print(f"\nREST fuzz cases: {dict(CASES)}; statuses: {dict(sorted(STATUSES.items()))}")
    assert sum(CASES.values()) >= examples(800) * 0.9
