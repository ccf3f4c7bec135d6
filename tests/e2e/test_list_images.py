"""``ImageService.List`` through the real API: filter, order_by, page tokens, and keyset paging
that stays exact while images are inserted and deleted between pages.

Rows go straight into the ``images`` table (READY) so that thousands of images cost a COPY.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest

from service.domain.ids import new_id
from tests.e2e.client import folder, rpc_error, violated_fields
from yandex.cloud.baremetal.v1alpha import image_pb2, image_service_pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
READY = 2
BASE = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Row:
    id: str
    name: str
    created_at: datetime


async def insert(db: asyncpg.Pool, folder_id: str, rows: Iterable[Row]) -> None:
    await db.copy_records_to_table(
        "images",
        records=[(r.id, folder_id, r.name, READY, r.created_at) for r in rows],
        columns=["id", "folder_id", "name", "status", "created_at"],
    )


async def delete(db: asyncpg.Pool, ids: Iterable[str]) -> None:
    await db.execute("DELETE FROM images WHERE id = ANY($1::text[])", list(ids))


def request(folder_id: str, **fields: object) -> image_service_pb2.ListImagesRequest:
    return image_service_pb2.ListImagesRequest(folder_id=folder_id, **fields)  # type: ignore[arg-type]


async def list_ids(images, folder_id: str, **fields: object) -> list[str]:
    """Every ID of a listing, following page tokens to the end."""
    ids: list[str] = []
    token = ""
    for _ in range(1000):
        page = await images.List(request(folder_id, page_token=token, **fields))
        ids += [image.id for image in page.images]
        token = page.next_page_token
        if not token:
            return ids
    raise AssertionError("the listing did not end")


# --- filter ------------------------------------------------------------------------------------


@pytest.fixture
async def named(db) -> tuple[str, dict[str, str]]:
    """A folder with images named abc, a-c, xabcx and other; returns it and name -> ID."""
    folder_id = folder()
    rows = [
        Row(new_id("img"), name, BASE + timedelta(minutes=i))
        for i, name in enumerate(["abc", "a-c", "xabcx", "other"])
    ]
    await insert(db, folder_id, rows)
    # A neighbour folder with the same names must never leak into the results.
    await insert(db, folder(), [Row(new_id("img"), r.name, r.created_at) for r in rows])
    return folder_id, {r.name: r.id for r in rows}


def names_of(ids: list[str], by_name: dict[str, str]) -> list[str]:
    by_id = {v: k for k, v in by_name.items()}
    return sorted(by_id[i] for i in ids)


async def test_every_image_of_the_folder_is_listed_without_a_filter(images, named):
    folder_id, by_name = named
    page = await images.List(request(folder_id))
    assert sorted(i.id for i in page.images) == sorted(by_name.values())
    assert all(i.status == image_pb2.Image.READY for i in page.images)
    assert all(i.folder_id == folder_id for i in page.images)
    assert page.next_page_token == ""


@pytest.mark.parametrize(
    ("filter_text", "expected"),
    [
        ('name="abc"', ["abc"]),
        ("name='abc'", ["abc"]),
        ('  name  =  "abc"  ', ["abc"]),
        ('name:"abc"', ["abc", "xabcx"]),
        ("name:'abc'", ["abc", "xabcx"]),
        ('name:"a" AND name:"c"', ["a-c", "abc", "xabcx"]),
        ('name:"a"AND name:"c" AND name:"b"', ["abc", "xabcx"]),
        ('name:"a" AND name="other"', []),
        ('name="ab"', []),
        ('name:"ABC"', []),
        ('name:""', ["a-c", "abc", "other", "xabcx"]),
        ('name:"-"', ["a-c"]),
        ('name:"x"', ["xabcx"]),
        # LIKE metacharacters are text: a LIKE pattern would match these
        ('name:"a_c"', []),
        ('name:"%"', []),
        ('name:"a%"', []),
        ('name:"_"', []),
        ('name="a_c"', []),
        ('name="%"', []),
        # regular expression and SQL metacharacters are text too
        ('name:".*"', []),
        ('name:"[a-c]"', []),
        ("name=\"abc' OR '1'='1\"", []),
        (r"name='abc\' OR \'1\'=\'1'", []),
        ('name="abc\\" OR \\"1\\"=\\"1"', []),
        ('name="\'; DROP TABLE images; --"', []),
        ('name:"$1"', []),
        (r'name:"\\"', []),
        # a backslash escapes the next character, whatever it is
        (r'name="a\bc"', ["abc"]),
        (r'name:"\-"', ["a-c"]),
        (r"name='\'abc'", []),
    ],
)
async def test_filter_by_name(images, named, filter_text, expected):
    folder_id, by_name = named
    ids = await list_ids(images, folder_id, filter=filter_text)
    assert names_of(ids, by_name) == expected


async def test_filter_by_id(images, named):
    folder_id, by_name = named
    target = by_name["a-c"]
    assert await list_ids(images, folder_id, filter=f'id="{target}"') == [target]
    assert await list_ids(images, folder_id, filter=f"id='{target}'") == [target]
    assert await list_ids(images, folder_id, filter=f'id:"{target[3:15]}"') == [target]
    assert await list_ids(images, folder_id, filter=f'id="{target}" AND name="a-c"') == [target]
    assert await list_ids(images, folder_id, filter=f'id="{target}" AND name="abc"') == []
    assert await list_ids(images, folder_id, filter='id="img"') == []
    assert sorted(await list_ids(images, folder_id, filter='id:"img"')) == sorted(by_name.values())


async def test_an_image_of_another_folder_is_not_found_by_its_id(images, named):
    _, by_name = named
    assert await list_ids(images, folder(), filter=f'id="{by_name["abc"]}"') == []


async def test_the_sql_metacharacters_left_the_table_intact(images, db, named):
    folder_id, _ = named
    await list_ids(images, folder_id, filter='name="\'; DROP TABLE images; --"')
    assert await db.fetchval("SELECT count(*) FROM images WHERE folder_id = $1", folder_id) == 4


async def test_a_quote_in_a_value_matches_nothing_and_is_not_an_error(images, named):
    folder_id, _ = named
    for filter_text in [r'name="a\"c"', r"name='a\'c'", "name='a\"c'", 'name="a\'c"']:
        assert await list_ids(images, folder_id, filter=filter_text) == [], filter_text


@pytest.mark.parametrize("filter_text", ['name:"a\x00"', "name='\x00'", 'id="img\x00"'])
async def test_a_nul_character_in_a_value_is_not_an_internal_error(images, named, filter_text):
    # PostgreSQL text cannot hold NUL, so such a value matches no name or ID: either an empty
    # page or INVALID_ARGUMENT naming the filter is right; INTERNAL is not.
    folder_id, _ = named
    error: grpc.aio.AioRpcError | None = None
    try:
        page = await images.List(request(folder_id, filter=filter_text))
    except grpc.aio.AioRpcError as exc:
        error = exc
    if error is None:
        assert list(page.images) == []
    else:
        assert error.code() == INVALID, error
        assert violated_fields(error) == ["filter"]


# --- order_by ----------------------------------------------------------------------------------


@pytest.fixture
async def ordered(db) -> tuple[str, list[Row]]:
    """A folder whose name, createdAt and ID orders all differ; some createdAt values tie."""
    folder_id = folder()
    names = ["delta", "alpha", "echo", "charlie", "bravo", "foxtrot", "golf"]
    minutes = [3, 5, 1, 3, 2, 3, 0]
    rows = [
        Row(new_id("img"), name, BASE + timedelta(minutes=m, microseconds=7))
        for name, m in zip(names, minutes, strict=True)
    ]
    await insert(db, folder_id, rows)
    return folder_id, rows


ORDERS: dict[str, Callable[[list[Row]], list[Row]]] = {
    "": lambda rows: sorted(rows, key=lambda r: r.id),
    "id": lambda rows: sorted(rows, key=lambda r: r.id),
    "id asc": lambda rows: sorted(rows, key=lambda r: r.id),
    "id desc": lambda rows: sorted(rows, key=lambda r: r.id, reverse=True),
    "name": lambda rows: sorted(rows, key=lambda r: r.name),
    "name asc": lambda rows: sorted(rows, key=lambda r: r.name),
    "name desc": lambda rows: sorted(rows, key=lambda r: r.name, reverse=True),
    "createdAt": lambda rows: sorted(rows, key=lambda r: (r.created_at, r.id)),
    "createdAt asc": lambda rows: sorted(rows, key=lambda r: (r.created_at, r.id)),
    "createdAt desc": lambda rows: sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True),
}


@pytest.mark.parametrize("order_by", list(ORDERS))
async def test_order_by_sorts_one_page(images, ordered, order_by):
    folder_id, rows = ordered
    page = await images.List(request(folder_id, order_by=order_by))
    assert [i.id for i in page.images] == [r.id for r in ORDERS[order_by](rows)]
    assert page.next_page_token == ""


@pytest.mark.parametrize("order_by", list(ORDERS))
@pytest.mark.parametrize("size", [1, 2, 3, 6, 7])
async def test_order_by_holds_across_pages(images, ordered, order_by, size):
    folder_id, rows = ordered
    ids = await list_ids(images, folder_id, order_by=order_by, page_size=size)
    assert ids == [r.id for r in ORDERS[order_by](rows)]


async def test_name_and_created_at_orders_are_as_written(images, ordered):
    folder_id, rows = ordered
    by_id = {r.id: r.name for r in rows}

    async def names(order_by: str) -> list[str]:
        return [by_id[i] for i in await list_ids(images, folder_id, order_by=order_by)]

    assert await names("name asc") == [
        "alpha",
        "bravo",
        "charlie",
        "delta",
        "echo",
        "foxtrot",
        "golf",
    ]
    assert await names("name desc") == [
        "golf",
        "foxtrot",
        "echo",
        "delta",
        "charlie",
        "bravo",
        "alpha",
    ]
    created_desc = await names("createdAt desc")
    assert created_desc[:1] == ["alpha"]
    assert sorted(created_desc[1:4]) == ["charlie", "delta", "foxtrot"]
    assert created_desc[4:] == ["bravo", "echo", "golf"]


@pytest.mark.parametrize("order_by", ["", "name desc", "createdAt", "createdAt desc", "id desc"])
@pytest.mark.parametrize("size", [1, 2])
async def test_filter_and_order_by_page_together(images, ordered, order_by, size):
    folder_id, rows = ordered
    filter_text = "name:'a' AND name:\"l\""  # alpha, charlie, delta
    expected = [r.id for r in ORDERS[order_by](rows) if "a" in r.name and "l" in r.name]
    assert len(expected) == 3
    ids = await list_ids(images, folder_id, order_by=order_by, page_size=size, filter=filter_text)
    assert ids == expected


async def test_the_default_page_size_is_used_for_zero(images, ordered):
    folder_id, rows = ordered
    page = await images.List(request(folder_id, page_size=0))
    assert len(page.images) == len(rows)


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "filter_text",
    [
        "name=abc",
        'size="1"',
        'name "abc"',
        'name="abc',
        'name="a" AND',
        'name="a" OR name="b"',
        'name="a" and name="b"',
        'name="a" name="b"',
        'name="a"; DROP TABLE images; --',
        'name:"' + "x" * 1000 + '"',
        " AND ".join(f'name:"{i}"' for i in range(11)),
    ],
)
async def test_a_malformed_filter_is_invalid_argument_naming_filter(images, filter_text):
    error = await rpc_error(images.List(request(folder(), filter=filter_text)))
    assert error.code() == INVALID
    assert violated_fields(error) == ["filter"]
    assert error.details().startswith("Request validation error: filter: ")


@pytest.mark.parametrize(
    "order_by", ["created_at", "name sideways", "id asc desc", "size", "name desc, id", "-name"]
)
async def test_a_bad_order_by_is_invalid_argument_naming_order_by(images, order_by):
    error = await rpc_error(images.List(request(folder(), order_by=order_by)))
    assert error.code() == INVALID
    assert violated_fields(error) == ["order_by"]


@pytest.mark.parametrize("token", ["garbage", "x" * 2000, "bm90LWEtdG9rZW4", "===="])
async def test_a_garbage_page_token_is_invalid_argument_naming_page_token(images, token):
    error = await rpc_error(images.List(request(folder(), page_token=token)))
    assert error.code() == INVALID
    assert violated_fields(error) == ["page_token"]


async def first_token(images, folder_id: str, **fields: object) -> str:
    page = await images.List(request(folder_id, page_size=2, **fields))
    assert page.next_page_token
    return page.next_page_token


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ("filter", {"filter": 'name:"l"'}),
        ("filter", {"filter": 'name:"a" AND name:"a"'}),
        ("filter", {}),
        ("order_by", {"filter": 'name:"a"', "order_by": "name desc"}),
        ("order_by", {"filter": 'name:"a"', "order_by": "name asc"}),
        ("order_by", {"filter": 'name:"a"', "order_by": "createdAt"}),
    ],
)
async def test_a_token_reused_with_another_query_is_invalid(images, ordered, change, fields):
    folder_id, _ = ordered
    token = await first_token(images, folder_id, filter='name:"a"')  # 4 images, default order
    error = await rpc_error(images.List(request(folder_id, page_token=token, **fields)))
    assert error.code() == INVALID, change
    assert violated_fields(error) == ["page_token"]


async def test_a_token_reused_in_another_folder_is_invalid(images, ordered, db):
    folder_id, rows = ordered
    other = folder()
    await insert(db, other, [Row(new_id("img"), r.name, r.created_at) for r in rows])
    token = await first_token(images, folder_id, order_by="createdAt desc")
    error = await rpc_error(
        images.List(request(other, page_token=token, order_by="createdAt desc"))
    )
    assert error.code() == INVALID
    assert violated_fields(error) == ["page_token"]


async def test_a_token_fits_the_same_query_spelled_otherwise_and_another_page_size(images, ordered):
    folder_id, rows = ordered
    token = await first_token(images, folder_id, filter='name:"a"', order_by="")
    page = await images.List(
        request(folder_id, page_token=token, filter="name : 'a'", order_by="id asc", page_size=100)
    )
    expected = [r.id for r in ORDERS[""](rows) if "a" in r.name]
    assert [i.id for i in page.images] == expected[2:]
    assert page.next_page_token == ""


# --- acceptance: exact paging under concurrent inserts and deletes -----------------------------

ORIGINALS = 2500
PAGE = 1000


def paging_key(order_by: str) -> tuple[Callable[[Row], tuple], bool]:
    """The sort key of a listing and whether it is descending."""
    if order_by == "":
        return (lambda r: (r.id,)), False
    if order_by == "name desc":
        return (lambda r: (r.name,)), True
    if order_by == "createdAt desc":
        return (lambda r: (r.created_at, r.id)), True
    raise AssertionError(order_by)


class RowMaker:
    """Random rows with unique names; createdAt drawn from few instants, so many tie."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.names: set[str] = set()
        self.instants = [
            BASE + timedelta(seconds=i, microseconds=rng.randrange(1_000_000)) for i in range(300)
        ]

    def __call__(self) -> Row:
        while True:
            name = f"n{uuid.UUID(int=self.rng.getrandbits(128)).hex[:14]}"
            if name not in self.names:
                self.names.add(name)
                break
        if self.rng.random() < 0.2:
            created = BASE + timedelta(seconds=self.rng.uniform(-10, 310))
        else:
            created = self.rng.choice(self.instants)
        return Row(new_id("img"), name, created)


@pytest.mark.parametrize("order_by", ["", "name desc", "createdAt desc"])
async def test_paging_2500_images_returns_each_once_under_inserts_and_deletes(images, db, order_by):
    rng = random.Random(f"paging-{order_by}")
    make = RowMaker(rng)
    key, descending = paging_key(order_by)

    def ahead(row: Row, cursor: tuple) -> bool:
        return key(row) < cursor if descending else key(row) > cursor

    folder_id = folder()
    neighbour = folder()
    originals = {row.id: row for row in (make() for _ in range(ORIGINALS))}
    await insert(db, folder_id, originals.values())
    await insert(db, neighbour, [make() for _ in range(50)])

    inserted: dict[str, Row] = {}
    inserted_ahead: set[str] = set()  # inserted where the listing had yet to reach
    deleted_unreturned: set[str] = set()  # deleted before the listing reached them
    deleted_returned: set[str] = set()
    returned: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await images.List(
            request(folder_id, page_size=PAGE, page_token=token, order_by=order_by)
        )
        pages += 1
        assert pages <= 10, "the listing does not end"
        assert len(page.images) <= PAGE
        assert all(i.folder_id == folder_id for i in page.images)
        returned += [i.id for i in page.images]
        token = page.next_page_token
        if not token:
            break
        assert len(page.images) == PAGE, "only the last page may be short"

        # Between pages: insert 100 images, delete 50 not yet returned and 50 returned ones
        # (among them the very row the token points after).
        known = {**originals, **inserted}
        cursor = key(known[returned[-1]])
        new_rows = [make() for _ in range(100)]
        await insert(db, folder_id, new_rows)
        await insert(db, neighbour, [make() for _ in range(10)])
        for row in new_rows:
            inserted[row.id] = row
            if ahead(row, cursor):
                inserted_ahead.add(row.id)
        seen = set(returned)
        pending = sorted(
            i for i in set(originals) - seen - deleted_unreturned if ahead(originals[i], cursor)
        )
        doomed_pending = rng.sample(pending, min(50, len(pending)))
        done = sorted((set(originals) & seen) - deleted_returned - {returned[-1]})
        doomed_done = [returned[-1], *rng.sample(done, 49)]
        await delete(db, doomed_pending + doomed_done)
        deleted_unreturned |= set(doomed_pending)
        deleted_returned |= set(doomed_done) & set(originals)

    counts: dict[str, int] = {}
    for image_id in returned:
        counts[image_id] = counts.get(image_id, 0) + 1
    twice = {i: n for i, n in counts.items() if n > 1}
    assert not twice, f"returned more than once: {twice}"
    strangers = set(returned) - set(originals) - set(inserted)
    assert not strangers, f"returned images never inserted here: {strangers}"
    kept = set(originals) - deleted_unreturned
    missing = kept - set(returned)
    assert not missing, f"{len(missing)} original images were never returned"
    assert not deleted_unreturned & set(returned), "an image deleted before its page was listed"
    assert inserted_ahead <= set(returned), "an image inserted ahead of the listing was skipped"
    assert not (set(inserted) - inserted_ahead) & set(returned), "inserted behind, yet listed"

    rows = {**originals, **inserted}
    keys = [key(rows[i]) for i in returned]
    expected = sorted(keys, reverse=descending)
    assert keys == expected, "the listing is not in order"
    assert pages >= 3
    assert len(deleted_unreturned) >= 100
    assert inserted_ahead
    assert deleted_returned
