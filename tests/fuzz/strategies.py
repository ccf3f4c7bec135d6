"""Hypothesis strategies for hostile requests to ImageService and OperationService.

Every request message of both services, field by field: random unicode (NUL included; no lone
surrogates, which a protobuf string cannot hold), empty, boundary-length and huge values (up to
100,000 characters, several hundred KB on the wire), IDs that are valid, almost valid or belong
to real images and operations, random int64 page sizes, label maps, update masks, filters,
orderings and page tokens (real ones, forged ones with a correct checksum, garbage), request
metadata (``idempotency-key``, ``x-client-request-id``, ``x-client-trace-id``, the caller), and
raw bytes: garbage, wire-format tricks, mutated encodings and valid encodings of the wrong
message type.

The state a fuzz session builds up (image and operation IDs, page tokens, the blob server's
address) lives in ``POOL`` and is read when a value is drawn, so IDs of real images reach
Update, Delete and the rest.

Safety: a Create the server accepts makes a worker download its ``uri``. Every ``uri`` that
could be accepted is confined to the test's blob server or a closed port on 127.0.0.1
(``safe_uri``), and every folder a Create could write to starts with ``fuzz-`` (so the final
invariant check sees every image the fuzzing made). Raw payloads are screened the same way.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import empty_pb2, field_mask_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import status_pb2
from hypothesis import strategies as st

from service.domain.listing import image_query
from service.domain.paging import decode_page_token, encode_page_token
from service.domain.validation import Violations, check_folder_id, check_uri
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2
from yandex.cloud.operation import operation_pb2, operation_service_pb2

FOLDER_PREFIX = "fuzz-"
FUZZ_FOLDERS = ("fuzz-a", "fuzz-b")
# A port nothing listens on: a download from it fails (UNAVAILABLE after the worker's retries).
CLOSED_PORT_URI = "http://127.0.0.1:1/image"


@dataclass
class Pool:
    """What the fuzz session has seen so far; strategies draw real values from it."""

    blob_base: str = "http://127.0.0.1:1"
    image_ids: list[str] = field(default_factory=list)
    operation_ids: list[str] = field(default_factory=list)
    list_tokens: list[str] = field(default_factory=list)
    operation_tokens: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)

    def remember(self, values: list[str], value: str) -> None:
        if value and value not in values:
            values.append(value)


POOL = Pool()


def from_pool(values: Callable[[], Sequence[str]], fallback: str) -> st.SearchStrategy[str]:
    """One of the values in the pool when drawn (``fallback`` while it is empty)."""

    def pick(index: int) -> str:
        current = values()
        return current[index % len(current)] if current else fallback

    return st.integers(min_value=0, max_value=1 << 16).map(pick)


# --- text -------------------------------------------------------------------------------------

# Full unicode minus surrogates (protobuf strings are UTF-8): NUL, controls, RTL marks, emoji.
ANY_TEXT = st.text(max_size=80)
ASCII_TEXT = st.text(st.characters(max_codepoint=0x7F), max_size=80)
SPECIALS = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\x00" * 20,
        "\n",
        "\r\n",
        "\t",
        "\\",
        "'",
        '"',
        "%",
        "_",
        "%_%",
        "*",
        "' OR '1'='1",
        "'; DROP TABLE images; --",
        "${jndi:ldap://127.0.0.1:1/a}",
        "{{7*7}}",
        "../../../../etc/passwd",
        "\u202etxt.exe",
        "\ufeff",
        "\u200b",
        "\uffff",
        "\U0010ffff",
        "\U0001d518\U0001d52b\U0001d526",  # fraktur letters
        "é",
        "e\u0301",
        "ǅ",
        "İ",
        "null",
        "None",
        "NaN",
        "-1",
        "0",
        "9" * 40,
        "a" * 20,
        "A" * 20,
    ]
)
BOUNDARY_LENGTHS = [0, 1, 2, 19, 20, 21, 49, 50, 51, 62, 63, 64, 127, 128, 129, 1023, 1024, 1025]


def _repeat(unit: str, length: int) -> str:
    return (unit * (length // max(len(unit), 1) + 1))[:length]


BOUNDARY_TEXT = st.builds(
    _repeat,
    st.sampled_from(["a", "z0", "a-", "-", "A", "é", "\x00", " ", "9", "_"]),
    st.sampled_from(BOUNDARY_LENGTHS),
)
# Up to 100,000 characters (up to 400 KB of UTF-8): cheap to make, a unit repeated.
HUGE_TEXT = st.builds(
    _repeat,
    st.one_of(st.text(min_size=1, max_size=4), st.sampled_from(["a", "\x00", "😀", "ab-"])),
    st.integers(min_value=1025, max_value=100_000),
)
HOSTILE = st.one_of(ANY_TEXT, ASCII_TEXT, SPECIALS, BOUNDARY_TEXT, HUGE_TEXT)
HOSTILE_SHORT = st.one_of(ANY_TEXT, SPECIALS, BOUNDARY_TEXT)


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, chosen with the given weights.

    (``st.one_of`` flattens and de-duplicates its branches, so repeating one does not weigh it.)
    """
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


# --- IDs ----------------------------------------------------------------------------------------

VALID_ID = st.from_regex(r"[a-z][a-z0-9]{19}", fullmatch=True)


def _near_misses(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        valid.map(str.upper),
        valid.map(lambda s: s[:-1]),
        valid.map(lambda s: s + "a"),
        valid.map(lambda s: "1" + s[1:]),
        valid.map(lambda s: s[:10] + "\x00" + s[11:]),
        valid.map(lambda s: s[:10] + "é" + s[11:]),
        valid.map(lambda s: s[:10] + "-" + s[11:]),
        valid.map(lambda s: " " + s[1:]),
        valid.map(lambda s: s + "\n"),
        valid.map(lambda s: s + "%"),
    )


POOL_IMAGE_ID = from_pool(lambda: POOL.image_ids, "imgfuzzfuzzfuzzfuzz0")
POOL_OPERATION_ID = from_pool(lambda: POOL.operation_ids, "opnfuzzfuzzfuzzfuzz0")
IMAGE_IDS = weighted(
    (6, POOL_IMAGE_ID),
    (1, VALID_ID),
    (2, _near_misses(st.one_of(VALID_ID, POOL_IMAGE_ID))),
    (3, HOSTILE),
)
OPERATION_IDS = weighted(
    (6, POOL_OPERATION_ID),
    (1, VALID_ID),
    (2, _near_misses(st.one_of(VALID_ID, POOL_OPERATION_ID))),
    (1, st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=60)),
    (2, HOSTILE),
)


def confine_folder(folder_id: str) -> str:
    """A folder the server would accept is moved under ``fuzz-`` (where Creates may write)."""
    v = Violations()
    check_folder_id(v, folder_id)
    if v.items or folder_id.startswith(FOLDER_PREFIX):
        return folder_id
    return (FOLDER_PREFIX + folder_id)[:50]


VALID_FOLDER_ID = st.sampled_from(FUZZ_FOLDERS)
FOLDER_IDS = weighted(
    (5, VALID_FOLDER_ID),
    (2, st.from_regex(r"[a-z][a-z0-9.-]{0,48}", fullmatch=True)),
    (1, BOUNDARY_TEXT),
    (3, HOSTILE),
).map(confine_folder)

# --- image fields -------------------------------------------------------------------------------

VALID_NAME = st.one_of(
    st.from_regex(r"[a-z][-a-z0-9]{0,61}[a-z0-9]", fullmatch=True),
    st.sampled_from(["fuzz-name-1", "fuzz-name-2", "ab", "a" * 63]),
    from_pool(lambda: POOL.names, "fuzz-name-3"),  # taken, most likely: ALREADY_EXISTS
)
NAMES = weighted(
    (3, VALID_NAME),
    (1, st.from_regex(r"[a-z]([-a-z0-9]{0,70}[a-z0-9])?", fullmatch=True)),
    (2, HOSTILE),
)
VALID_DESCRIPTION = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=300)
DESCRIPTIONS = weighted(
    (1, st.just("")),
    (3, VALID_DESCRIPTION),
    (1, st.text(max_size=1100)),
    (1, BOUNDARY_TEXT),
    (1, HUGE_TEXT),
    (1, SPECIALS),
)
LABEL_KEY = st.from_regex(r"[a-z][-_0-9a-z]{0,62}", fullmatch=True)
LABEL_VALUE = st.from_regex(r"[-_0-9a-z]{0,63}", fullmatch=True)
VALID_LABELS = st.dictionaries(LABEL_KEY, LABEL_VALUE, max_size=5)
LABELS = weighted(
    (1, st.just({})),
    (3, VALID_LABELS),
    (
        2,
        st.dictionaries(
            st.one_of(LABEL_KEY, HOSTILE_SHORT), st.one_of(LABEL_VALUE, HOSTILE), max_size=5
        ),
    ),
    (1, st.integers(min_value=62, max_value=66).map(lambda n: {f"k{i}": "v" for i in range(n)})),
    (1, st.builds(lambda k, v: {k: v}, BOUNDARY_TEXT, BOUNDARY_TEXT)),
)

MASK_PATHS = st.one_of(
    st.sampled_from(
        [
            "name",
            "description",
            "labels",
            "*",
            "",
            "Name",
            "NAME",
            "labels.env",
            "labels[env]",
            "id",
            "image_id",
            "folder_id",
            "status",
            "checksum",
            "created_at",
            "name,description",
            " name",
            "name ",
            "*.*",
            "update_mask",
        ]
    ),
    HOSTILE_SHORT,
)


def _mask(paths: list[str]) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=paths)


VALID_MASKS = st.one_of(
    st.none(),
    st.just(_mask([])),
    st.just(_mask(["*"])),
    st.lists(st.sampled_from(["name", "description", "labels"]), min_size=1, max_size=3).map(_mask),
)
UPDATE_MASKS = weighted((3, VALID_MASKS), (2, st.lists(MASK_PATHS, max_size=6).map(_mask)))

# --- uri ------------------------------------------------------------------------------------------


def safe_uri(uri: str) -> str:
    """``uri`` if the server would refuse it or it is on the blob server; else a closed port.

    So an accepted Create never makes a worker reach anything but this machine's test servers.
    """
    v = Violations()
    check_uri(v, uri)
    if v.items:
        return uri  # refused by validation: nothing is downloaded
    try:
        parts = urlsplit(uri)
        blob = urlsplit(POOL.blob_base)
        if (parts.hostname, parts.port) in ((blob.hostname, blob.port), ("127.0.0.1", 1)):
            return uri
    except ValueError:
        pass
    return CLOSED_PORT_URI


BLOB_PATHS = weighted(
    (3, st.just("/blob/8")),
    (2, st.integers(min_value=0, max_value=4096).map(lambda n: f"/blob/{n}")),
    (
        2,
        st.sampled_from(
            [
                "/status/404",
                "/status/403",
                "/status/500",
                "/status/429",
                "/redirect/16",
                "/redirect-loop",
                "/nothing-here",
                "/blob/8?x=%00",
                "/blob/8#frag",
            ]
        ),
    ),
)
VALID_URI = BLOB_PATHS.map(lambda path: POOL.blob_base + path)
URIS = weighted(
    (4, VALID_URI),
    (1, st.just(CLOSED_PORT_URI)),
    (
        2,
        st.builds(
            lambda scheme, rest: f"{scheme}{rest}",
            st.sampled_from(
                ["http://", "https://", "HTTP://", "ftp://", "file://", "javascript:", "http:", ""]
            ),
            st.one_of(
                HOSTILE_SHORT,
                st.sampled_from(
                    [
                        "127.0.0.1",
                        "[::1]/x",
                        "10.0.0.1/x",
                        "169.254.169.254/latest/meta-data",
                        "0.0.0.0/x",
                        "127.0.0.1:99999/x",
                        "127.0.0.1:-1/x",
                        "user:pass@127.0.0.1:1/x",
                        "[::ffff:127.0.0.1]:1/x",
                        "[fe80::1%25eth0]/x",
                    ]
                ),
            ),
        ),
    ),
    (2, HOSTILE),
).map(safe_uri)

# --- list fields ------------------------------------------------------------------------------

PAGE_SIZES = weighted(
    (2, st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    (3, st.integers(min_value=-2, max_value=1002)),
    (2, st.sampled_from([0, 1, 2, 20, 999, 1000, 1001, -1, 2**31, 2**63 - 1, -(2**63)])),
)
FILTER_VALUE = st.one_of(ANY_TEXT, SPECIALS, BOUNDARY_TEXT, from_pool(lambda: POOL.names, "seed"))


def _quote(value: str, quote: str) -> str:
    return quote + value.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote


CONDITION = st.builds(
    lambda field_name, op, value, quote, raw: (
        f"{field_name} {op} {value if raw else _quote(value, quote)}"
    ),
    weighted(
        (3, st.sampled_from(["id", "name"])),
        (1, st.sampled_from(["Name", "folder_id", "status", "labels.env", "created_at"])),
    ),
    weighted((3, st.sampled_from(["=", ":"])), (1, st.sampled_from(["!=", "<", "==", "IN", ""]))),
    FILTER_VALUE,
    st.sampled_from(['"', "'"]),
    weighted((4, st.just(False)), (1, st.just(True))),
)
FILTERS = weighted(
    (2, st.just("")),
    (
        4,
        st.lists(CONDITION, min_size=1, max_size=12).flatmap(
            lambda conditions: weighted(
                (3, st.just(" AND ")),
                (1, st.sampled_from([" and ", " OR ", "AND", " AND AND ", ","])),
            ).map(lambda joiner: joiner.join(conditions))
        ),
    ),
    (1, st.builds(lambda v: f'name = "{v}', FILTER_VALUE)),  # unterminated
    (1, st.builds(lambda v: f"name:'{v}\\", FILTER_VALUE)),  # trailing backslash
    (2, HOSTILE),
)
ORDER_BYS = weighted(
    (2, st.just("")),
    (
        4,
        st.builds(
            lambda f, d, pad: f"{pad}{f}{d}{pad}",
            st.sampled_from(["id", "name", "createdAt", "created_at", "ID", "status"]),
            st.sampled_from(["", " asc", " desc", " DESC", " AsC", " up", "  desc", ",name"]),
            st.sampled_from(["", " ", "\t", "\n"]),
        ),
    ),
    (2, HOSTILE),
)

# A token's position as hostile JSON: wrong types, huge and odd strings, odd timestamps.
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    ANY_TEXT,
    st.sampled_from(
        [
            "0001-01-01T00:00:00",
            "0001-01-01T00:00:00+14:00",
            "0001-01-01T00:00:00-14:00",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59+14:00",
            "9999-12-31T23:59:59.999999+00:00",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-45T99:99:99",
            "\ud800",
            "\udfff\ud800",
        ]
    ),
)
POSITION_KEYS = st.one_of(
    st.lists(JSON_SCALARS, max_size=3),
    st.lists(JSON_SCALARS, min_size=2, max_size=2),
    JSON_SCALARS,
    st.dictionaries(ANY_TEXT, JSON_SCALARS, max_size=2),
)


def _forge(position: dict[str, Any]) -> str:
    """A token with a correct checksum over any position (the checksum is no secret)."""
    try:
        return encode_page_token(position)
    except (ValueError, TypeError):
        return "forged-token-failed"


def _query_digest(folder_id: str, filter_text: str, order_by: str) -> str | None:
    """The query digest a real token for this List request would carry, if it parses."""
    try:
        query = image_query(folder_id, filter_text, order_by, "")
        return str(decode_page_token(query.next_token("x", "y"))["q"])
    except Exception:  # an invalid filter or order: no token can match it
        return None


def list_page_tokens(folder_id: str, filter_text: str, order_by: str) -> st.SearchStrategy[str]:
    digest = _query_digest(folder_id, filter_text, order_by)
    return weighted(
        (3, st.just("")),
        (1, from_pool(lambda: POOL.list_tokens, "")),
        (1, from_pool(lambda: POOL.operation_tokens, "")),
        (2, st.builds(lambda k: _forge({"q": digest, "k": k}), POSITION_KEYS)),
        (
            2,
            st.builds(
                lambda k: _forge({"q": digest, "k": k}),
                st.lists(st.one_of(ANY_TEXT, JSON_SCALARS), min_size=2, max_size=2),
            ),
        ),
        (1, st.builds(lambda q, k: _forge({"q": q, "k": k}), HOSTILE_SHORT, POSITION_KEYS)),
        (
            1,
            st.builds(
                lambda extra: _forge({"q": digest, "k": ["a", "b"], **extra}),
                st.dictionaries(ANY_TEXT.filter(lambda k: k != "v"), JSON_SCALARS, max_size=2),
            ),
        ),
        (1, st.sampled_from(["=", "====", "a", "eyJ2IjoxfQ", "Li4u", "..", "\x00"])),
        (1, HOSTILE),
    )


def operation_page_tokens(image_id: str) -> st.SearchStrategy[str]:
    return weighted(
        (3, st.just("")),
        (1, from_pool(lambda: POOL.operation_tokens, "")),
        (1, from_pool(lambda: POOL.list_tokens, "")),
        (1, st.builds(lambda k: _forge({"image": image_id, "k": k}), POSITION_KEYS)),
        (
            3,
            st.builds(
                lambda when, op: _forge({"image": image_id, "k": [when, op]}),
                JSON_SCALARS,
                st.one_of(ANY_TEXT, POOL_OPERATION_ID),
            ),
        ),
        (
            1,
            st.builds(
                lambda other, k: _forge({"image": other, "k": k}), HOSTILE_SHORT, POSITION_KEYS
            ),
        ),
        (1, HOSTILE),
    )


# --- requests -------------------------------------------------------------------------------------


def one_field_hostile(
    valid: st.SearchStrategy[Message], hostile: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[Message]:
    """A valid request with one field replaced by a hostile value (so it reaches deeper)."""

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        request = draw(valid)
        name = draw(st.sampled_from(sorted(hostile)))
        value = draw(hostile[name])
        if name == "update_mask":
            request.ClearField("update_mask")
            if value is not None:
                request.update_mask.CopyFrom(value)
        elif name == "labels":
            request.ClearField("labels")
            request.labels.update(value)
        else:
            setattr(request, name, value)
        return request

    return build()


@st.composite
def list_images_requests(draw: st.DrawFn) -> image_service_pb2.ListImagesRequest:
    folder_id = draw(FOLDER_IDS)
    filter_text = draw(FILTERS)
    order_by = draw(ORDER_BYS)
    return image_service_pb2.ListImagesRequest(
        folder_id=folder_id,
        page_size=draw(PAGE_SIZES),
        page_token=draw(list_page_tokens(folder_id, filter_text, order_by)),
        order_by=order_by,
        filter=filter_text,
    )


@st.composite
def list_operations_requests(draw: st.DrawFn) -> image_service_pb2.ListImageOperationsRequest:
    image_id = draw(IMAGE_IDS)
    return image_service_pb2.ListImageOperationsRequest(
        image_id=image_id,
        page_size=draw(PAGE_SIZES),
        page_token=draw(operation_page_tokens(image_id)),
    )


@st.composite
def _update_requests(
    draw: st.DrawFn,
    image_ids: st.SearchStrategy[str],
    names: st.SearchStrategy[str],
    descriptions: st.SearchStrategy[str],
    labels: st.SearchStrategy[dict[str, str]],
    masks: st.SearchStrategy[field_mask_pb2.FieldMask | None],
) -> image_service_pb2.UpdateImageRequest:
    request = image_service_pb2.UpdateImageRequest(
        image_id=draw(image_ids),
        name=draw(names),
        description=draw(descriptions),
        labels=draw(labels),
    )
    mask = draw(masks)
    if mask is not None:
        request.update_mask.CopyFrom(mask)
    return request


VALID_UPDATES = _update_requests(
    POOL_IMAGE_ID,
    st.one_of(st.just(""), VALID_NAME),
    VALID_DESCRIPTION,
    VALID_LABELS,
    VALID_MASKS,
)
UPDATE_REQUESTS = weighted(
    (
        2,
        _update_requests(
            IMAGE_IDS, st.one_of(st.just(""), NAMES), DESCRIPTIONS, LABELS, UPDATE_MASKS
        ),
    ),
    (
        2,
        one_field_hostile(
            VALID_UPDATES,
            {
                "image_id": IMAGE_IDS,
                "name": NAMES,
                "description": DESCRIPTIONS,
                "labels": LABELS,
                "update_mask": UPDATE_MASKS,
            },
        ),
    ),
    (1, VALID_UPDATES),
)
GET_IMAGE_REQUESTS = st.builds(image_service_pb2.GetImageRequest, image_id=IMAGE_IDS)
DELETE_REQUESTS = st.builds(image_service_pb2.DeleteImageRequest, image_id=IMAGE_IDS)
VALID_CREATES = st.builds(
    image_service_pb2.CreateImageRequest,
    folder_id=VALID_FOLDER_ID,
    name=VALID_NAME,
    description=VALID_DESCRIPTION,
    uri=VALID_URI,
    labels=VALID_LABELS,
)
CREATE_REQUESTS = weighted(
    (
        2,
        st.builds(
            image_service_pb2.CreateImageRequest,
            folder_id=FOLDER_IDS,
            name=NAMES,
            description=DESCRIPTIONS,
            uri=URIS,
            labels=LABELS,
        ),
    ),
    (
        2,
        one_field_hostile(
            VALID_CREATES,
            {
                "folder_id": FOLDER_IDS,
                "name": NAMES,
                "description": DESCRIPTIONS,
                "uri": URIS,
                "labels": LABELS,
            },
        ),
    ),
    (1, VALID_CREATES),
)
GET_OPERATION_REQUESTS = st.builds(
    operation_service_pb2.GetOperationRequest, operation_id=OPERATION_IDS
)
CANCEL_REQUESTS = st.builds(
    operation_service_pb2.CancelOperationRequest, operation_id=OPERATION_IDS
)

IMAGE_SERVICE = "/yandex.cloud.baremetal.v1alpha.ImageService/"
OPERATION_SERVICE = "/yandex.cloud.operation.OperationService/"


@dataclass(frozen=True)
class Method:
    path: str
    request: type[Message]
    response: type[Message]
    requests: st.SearchStrategy[Any]
    mutating: bool = False


def _methods() -> dict[str, Method]:
    ims = image_service_pb2
    ops = operation_service_pb2
    return {
        m.path: m
        for m in (
            Method(IMAGE_SERVICE + "Get", ims.GetImageRequest, image_pb2.Image, GET_IMAGE_REQUESTS),
            Method(
                IMAGE_SERVICE + "List",
                ims.ListImagesRequest,
                ims.ListImagesResponse,
                list_images_requests(),
            ),
            Method(
                IMAGE_SERVICE + "Create",
                ims.CreateImageRequest,
                operation_pb2.Operation,
                CREATE_REQUESTS,
                mutating=True,
            ),
            Method(
                IMAGE_SERVICE + "Update",
                ims.UpdateImageRequest,
                operation_pb2.Operation,
                UPDATE_REQUESTS,
                mutating=True,
            ),
            Method(
                IMAGE_SERVICE + "Delete",
                ims.DeleteImageRequest,
                operation_pb2.Operation,
                DELETE_REQUESTS,
                mutating=True,
            ),
            Method(
                IMAGE_SERVICE + "ListOperations",
                ims.ListImageOperationsRequest,
                ims.ListImageOperationsResponse,
                list_operations_requests(),
            ),
            Method(
                OPERATION_SERVICE + "Get",
                ops.GetOperationRequest,
                operation_pb2.Operation,
                GET_OPERATION_REQUESTS,
            ),
            Method(
                OPERATION_SERVICE + "Cancel",
                ops.CancelOperationRequest,
                operation_pb2.Operation,
                CANCEL_REQUESTS,
                mutating=True,
            ),
        )
    }


METHODS = _methods()
ALL_REQUESTS = st.one_of(*(m.requests for m in METHODS.values()))

# --- metadata ---------------------------------------------------------------------------------

# Legal HTTP/2 header values are printable ASCII; grpc refuses anything else client-side.
HEADER_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
HEADER_VALUES = weighted(
    (4, st.uuids().map(str)),
    (4, HEADER_TEXT),
    (2, st.sampled_from(["", " ", "a", "k" * 128, "k" * 129, "fuzz-key-1", "fuzz-key-2", "%00"])),
    (1, st.integers(min_value=129, max_value=2000).map(lambda n: "k" * n)),
    # Past grpc's limits on request metadata (8 KiB soft, 16 KiB hard): refused by grpc.
    (1, st.integers(min_value=8000, max_value=20000).map(lambda n: "k" * n)),
)
# Who calls: the run's admin (every folder), an editor or a viewer of the fuzz folders, or a
# made-up authorization header.
RAW_AUTHORIZATION = st.one_of(
    HEADER_TEXT,
    st.builds(lambda t: f"Bearer {t}", HEADER_TEXT),
    st.builds(
        lambda t: f"Bearer tok{t}.{'A' * 43}",
        st.text(string.ascii_lowercase + string.digits, min_size=17, max_size=17),
    ),
).map(lambda header: "raw:" + header)
CALLERS = st.sampled_from(["editor"] * 5 + ["admin"] * 2 + ["viewer", "raw"]).flatmap(
    lambda caller: RAW_AUTHORIZATION if caller == "raw" else st.just(caller)
)


@dataclass(frozen=True)
class CallMetadata:
    caller: str
    headers: tuple[tuple[str, str], ...]


CALL_METADATA = st.builds(
    CallMetadata,
    caller=CALLERS,
    headers=st.one_of(
        st.just(()),
        st.tuples(st.tuples(st.just("idempotency-key"), st.uuids().map(str))),
        st.lists(
            st.tuples(
                st.sampled_from(["idempotency-key", "x-client-request-id", "x-client-trace-id"]),
                HEADER_VALUES,
            ),
            max_size=4,
        ).map(tuple),
    ),
)


@st.composite
def call_batches(draw: st.DrawFn) -> list[tuple[str, Message, CallMetadata]]:
    """1-4 calls of any methods to send at once, often aimed at one image (races)."""
    focus = draw(st.one_of(st.none(), POOL_IMAGE_ID))
    batch = []
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(sorted(METHODS)))
        request = draw(METHODS[path].requests)
        aimed = "image_id" in request.DESCRIPTOR.fields_by_name and draw(st.booleans())
        if focus is not None and aimed:
            request.image_id = focus
        batch.append((path, request, draw(CALL_METADATA)))
    return batch


CALL_BATCHES = call_batches()


# --- raw bytes --------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint((number << 3) | wire_type)


FIELD_NUMBERS = st.one_of(
    st.sampled_from([1, 2, 3, 4, 11, 100, 101, 102, 103, 200]),
    st.integers(min_value=1, max_value=(1 << 29) - 1),
)
# Hand-made wire format: right field numbers with wrong wire types, lengths past the end,
# invalid UTF-8 in strings, overlong varints, groups, deep nesting, map entries of garbage.
WIRE_TRICKS = st.one_of(
    st.builds(lambda n, v: _tag(n, 0) + _varint(v), FIELD_NUMBERS, st.integers(0, (1 << 64) - 1)),
    st.builds(lambda n, b: _tag(n, 2) + _varint(len(b)) + b, FIELD_NUMBERS, st.binary(max_size=64)),
    st.builds(lambda n: _tag(n, 2) + _varint(1 << 31) + b"x", FIELD_NUMBERS),
    st.builds(
        lambda n: _tag(n, 2) + b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", FIELD_NUMBERS
    ),
    st.builds(lambda n: _tag(n, 2) + _varint(2) + b"\xff\xfe", st.sampled_from([1, 2, 3, 4, 11])),
    st.builds(lambda n: _tag(n, 2) + _varint(3) + b"\xed\xa0\x80", st.sampled_from([1, 3, 11])),
    st.builds(
        lambda n, w: _tag(n, w) + b"\x01\x02\x03\x04\x05\x06\x07\x08",
        FIELD_NUMBERS,
        st.sampled_from([1, 3, 4, 5, 6, 7]),
    ),
    st.builds(lambda n: _tag(n, 3) + _tag(n, 4), FIELD_NUMBERS),
    st.just(b"\x80" * 11),
    st.just(b"\x00"),
    st.just(b"\x08"),
    st.integers(min_value=1, max_value=200).map(
        # update_mask (2) nested in itself: a FieldMask whose paths field holds messages
        lambda depth: b"".join(_tag(2, 2) + _varint(3 * (depth - i)) for i in range(depth))
    ),
    st.builds(
        lambda k, v: (
            _tag(200, 2)
            + _varint(len(k) + len(v) + 4)
            + _tag(1, 2)
            + _varint(len(k))
            + k
            + _tag(2, 2)
            + _varint(len(v))
            + v
        ),
        st.binary(max_size=20),
        st.binary(max_size=20),
    ),
)


def _mutate(data: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    """Flip, drop or insert bytes of ``data`` at the given positions."""
    out = bytearray(data)
    for kind, position, value in ops:
        if not out:
            out.append(value)
            continue
        i = position % len(out)
        if kind == 0:
            out[i] ^= 1 << (value % 8)
        elif kind == 1:
            del out[i]
        elif kind == 2:
            out.insert(i, value)
        else:
            del out[i:]
    return bytes(out)


VALID_ENCODINGS = ALL_REQUESTS.map(lambda request: request.SerializeToString())
# Messages of other kinds altogether: what the API answers, and well-known types.
FOREIGN_ENCODINGS = st.one_of(
    st.builds(
        image_pb2.Image,
        id=IMAGE_IDS,
        folder_id=FOLDER_IDS,
        name=NAMES,
        description=DESCRIPTIONS,
        status=st.integers(min_value=-(2**31), max_value=2**31 - 1),
        labels=LABELS,
    ),
    st.builds(
        operation_pb2.Operation,
        id=OPERATION_IDS,
        description=HOSTILE_SHORT,
        created_by=HOSTILE_SHORT,
        done=st.booleans(),
    ),
    st.builds(status_pb2.Status, code=st.integers(-(2**31), 2**31 - 1), message=HOSTILE_SHORT),
    st.lists(MASK_PATHS, max_size=4).map(_mask),
    st.just(empty_pb2.Empty()),
).map(lambda message: message.SerializeToString())


def screen_payload(payload: bytes) -> bytes:
    """Drop a payload that would make the server download from anywhere but the test servers.

    A payload that decodes as a ``CreateImageRequest`` the server could accept (a valid
    ``uri``) must name the blob server or the closed port, and a folder under ``fuzz-``.
    """
    try:
        create = image_service_pb2.CreateImageRequest.FromString(payload)
    except (DecodeError, ValueError):
        return payload
    if safe_uri(create.uri) != create.uri or confine_folder(create.folder_id) != create.folder_id:
        return b""
    return payload


RAW_PAYLOADS = st.one_of(
    st.binary(max_size=512),
    st.lists(WIRE_TRICKS, min_size=1, max_size=6).map(b"".join),
    st.builds(lambda valid, trick: valid + trick, VALID_ENCODINGS, WIRE_TRICKS),
    # Valid encodings of any request type: the right one, or the wrong one for the method.
    VALID_ENCODINGS,
    FOREIGN_ENCODINGS,
    st.builds(
        _mutate,
        VALID_ENCODINGS,
        st.lists(
            st.tuples(st.integers(0, 3), st.integers(0, 1 << 20), st.integers(0, 255)),
            min_size=1,
            max_size=4,
        ),
    ),
    # Past the server's 1 MiB message limit, and just under it.
    st.builds(
        lambda unit, size: (unit * (size // max(len(unit), 1) + 1))[:size],
        st.binary(min_size=1, max_size=8),
        st.sampled_from([1024 * 1024 - 16, 1024 * 1024 + 1, 2 * 1024 * 1024]),
    ),
).map(screen_payload)
