"""Rules kept twice, once in Python and once as SQL for speed, hold to each other: random inputs
run through both against the real PostgreSQL and the results are compared (STYLE.md, "One home
per rule").

- The group commit (``begin_updates.sql``) accepts what ``begin_update`` accepts one at a time.
- The workers' one-statement Update (``apply_updates.sql``) leaves what the transaction
  (``execute._apply_update``) leaves.
- The finished-operation notification (migration 0006) reads as ``reads.get_operations``.

The two paths compared each get a copy of an example's state, told apart only by their IDs (each
copy has folders, images and operations of its own, so copies, examples and the other tests
sharing the run's database never see each other's rows). Rows are named back to the example's
own names ("folder0", "image2", "operation1") before comparing, and removed after each example.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, currently_in_test_context, event, example, given, settings
from hypothesis import strategies as st

from service.adapters.postgres import Postgres
from service.adapters.postgres import accept as accept_module
from service.adapters.postgres import finish as finish_module
from service.adapters.postgres.accept import PostgresAccepts
from service.adapters.postgres.listener import CHANNEL, finished_operation
from service.domain import ids
from service.domain.errors import (
    AlreadyExists,
    Code,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
)
from service.domain.model import (
    DESCRIPTIONS,
    IdempotencyKey,
    Image,
    ImageChange,
    ImageStatus,
    Operation,
    OperationError,
    OperationKind,
)
from service.domain.validation import MAX_DESCRIPTION
from service.usecases.execute import _apply_update
from service.usecases.ports import NewUpdate
from tests.integration.conftest import own_database_fixtures
from tests.integration.rows import folder, update

# A database of this module's own, not the run's shared one (see conftest.own_database).
# The end-to-end tests' relay would publish the Updates accepted here to their workers,
# which would apply them while the two rules are compared.
own, database_url, db = own_database_fixtures("rules")

PROPERTY = settings(
    max_examples=35,
    deadline=None,
    database=None,  # nothing written under .hypothesis/; a failure prints its example
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# pg_notify refuses a payload of 8000 bytes or more; the trigger then sends the ID alone.
NOTIFY_LIMIT = 8000

# Few names, so that a new name is often taken by another image of the folder.
NAMES = ("aa", "ab", "ba")
# Every status an image row can hold (the table's CHECK leaves out STATUS_UNSPECIFIED).
STATUSES = [s for s in ImageStatus if s is not ImageStatus.STATUS_UNSPECIFIED]


class Copy:
    """One copy of an example's state: its IDs, made on first use, and the way back from them
    to the example's own names, under which two copies compare equal."""

    def __init__(self) -> None:
        self._real: dict[str, str] = {}

    def _id(self, logical: str, make: Callable[[], str]) -> str:
        if logical not in self._real:
            self._real[logical] = make()
        return self._real[logical]

    def folder(self, n: int) -> str:
        return self._id(f"folder{n}", folder)

    def image(self, n: int) -> str:
        return self._id(f"image{n}", lambda: ids.new_id(ids.IMAGE_PREFIX))

    def gone_image(self, n: int) -> str:
        """An image that does not exist (an Update's, by the Update's position)."""
        return self._id(f"gone{n}", lambda: ids.new_id(ids.IMAGE_PREFIX))

    def operation(self, n: int) -> str:
        return self._id(f"operation{n}", lambda: ids.new_id(ids.OPERATION_PREFIX))

    def key(self, n: int) -> str:
        """The idempotency key of the example's ``n``-th Update."""
        return self._id(f"key{n}", lambda: f"k-{ids.new_id('key')}")

    def ids_of(self, kind: str) -> list[str]:
        return [real for logical, real in self._real.items() if logical.startswith(kind)]

    def logical(self, text: str | None) -> str | None:
        """``text`` with this copy's IDs replaced by the example's names."""
        if text is None:
            return None
        for logical, real in self._real.items():
            text = text.replace(real, logical)
        return text

    async def remove(self, db: asyncpg.Pool) -> None:
        """Delete the rows of this copy, and only those."""
        folders, images = self.ids_of("folder"), self.ids_of("image")
        await db.execute(
            "DELETE FROM operations WHERE id = ANY($1) OR folder_id = ANY($2)",
            self.ids_of("operation"),
            folders,
        )
        await db.execute(
            "DELETE FROM images WHERE id = ANY($1) OR folder_id = ANY($2)", images, folders
        )
        await db.execute("DELETE FROM idempotency_keys WHERE key = ANY($1)", self.ids_of("key"))


@pytest.fixture
async def copies(db: asyncpg.Pool) -> AsyncIterator[list[Copy]]:
    """Copies made by a test; whatever rows they left are removed at the end."""
    made: list[Copy] = []
    yield made
    for copy in made:
        await copy.remove(db)


async def fresh_copy(db: asyncpg.Pool, made: list[Copy]) -> Copy:
    """A new copy; the rows of the earlier examples' copies are removed first."""
    while made:
        await made.pop().remove(db)
    made.append(Copy())
    return made[-1]


async def state(db: asyncpg.Pool, copy: Copy) -> dict[str, Any]:
    """A copy's images and operations as they stand, under the example's names."""
    images = await db.fetch(
        "SELECT id, folder_id, name, description, checksum, status, labels, created_at, revision"
        " FROM images WHERE folder_id = ANY($1)",
        copy.ids_of("folder"),
    )
    operations = await db.fetch(
        "SELECT id, kind, image_id, folder_id, description, created_by, request, done, response,"
        " error_code, error_message, lease_until FROM operations WHERE id = ANY($1)",
        copy.ids_of("operation"),
    )
    keys = await db.fetch(
        "SELECT caller, key, fingerprint, operation_id FROM idempotency_keys WHERE key = ANY($1)",
        copy.ids_of("key"),
    )
    return {
        "keys": {
            copy.logical(r["key"]): (r["caller"], r["fingerprint"], copy.logical(r["operation_id"]))
            for r in keys
        },
        "images": {
            copy.logical(r["id"]): {
                "folder": copy.logical(r["folder_id"]),
                "name": r["name"],
                "description": r["description"],
                "checksum": r["checksum"],
                "status": ImageStatus(r["status"]),
                "labels": json.loads(r["labels"]),
                "created_at": r["created_at"],
                "revision": r["revision"],
            }
            for r in images
        },
        "operations": {
            copy.logical(r["id"]): {
                "kind": r["kind"],
                "image": copy.logical(r["image_id"]),
                "folder": copy.logical(r["folder_id"]),
                "description": r["description"],
                "created_by": r["created_by"],
                "request": json.loads(r["request"]),
                "done": r["done"],
                # Decoded, not compared as JSON text: SQL writes created_at with to_char and
                # Python with isoformat.
                "response": named_image(copy, r["response"]),
                "error": None
                if r["error_code"] is None
                else (Code(r["error_code"]), copy.logical(r["error_message"])),
                "lease_until": r["lease_until"],
            }
            for r in operations
        },
    }


def named_image(copy: Copy, response: str | None) -> Image | None:
    if response is None:
        return None
    image = Image.from_snapshot(json.loads(response))
    return replace(image, id=copy.logical(image.id), folder_id=copy.logical(image.folder_id))


def note(what: str) -> None:
    """Count ``what`` in Hypothesis's statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


# -- Strategies -------------------------------------------------------------------------------

names = st.sampled_from(NAMES)
new_names = st.sampled_from([None] * 6 + list(NAMES))  # a rename in one Update of three
label_keys = st.from_regex(r"[a-z][-_0-9a-z]{0,8}", fullmatch=True)
label_values = st.from_regex(r"[-_0-9a-z]{0,8}", fullmatch=True)
labels = st.dictionaries(label_keys, label_values, max_size=3)
# What validation lets through: any text without NUL, up to MAX_DESCRIPTION characters.
characters = st.characters(codec="utf-8", exclude_characters="\x00")
texts = st.text(characters)
descriptions = st.text(characters, max_size=MAX_DESCRIPTION) | st.text(
    st.sampled_from('é€😀"\\\n x'), min_size=MAX_DESCRIPTION - 2, max_size=MAX_DESCRIPTION
)
changes = st.builds(
    ImageChange,
    name=new_names,
    description=st.none() | st.just("") | descriptions,
    labels=st.none() | st.just({}) | labels,
)
times = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


# -- 1. The group commit accepts what one at a time accepts -----------------------------------


@dataclass(frozen=True)
class ImageAt:
    """An image of an example, by the folder's position."""

    folder: int
    name: str
    status: ImageStatus


@dataclass(frozen=True)
class UpdateOf:
    """An Update of an example: ``image`` by position, ``None`` for one that does not exist;
    ``folders`` the caller may see (``None``: all)."""

    image: int | None
    change: ImageChange
    folders: list[int] | None
    created_by: str
    keyed: bool = False  # sent with an idempotency key of its own


@dataclass(frozen=True)
class Batch:
    folders: int
    images: list[ImageAt]
    updates: list[UpdateOf]


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    folders = draw(st.integers(1, 3))
    images = draw(
        st.lists(
            st.builds(
                ImageAt,
                folder=st.integers(0, folders - 1),
                name=names,
                # Mostly READY, so that most Updates get as far as the name and the quota.
                status=st.sampled_from([ImageStatus.READY] * 5 + STATUSES),
            ),
            min_size=1,
            max_size=6,
            unique_by=lambda i: (i.folder, i.name),
        )
    )
    # Mostly an image of the example; the position past the end is one that does not exist.
    targets = st.integers(0, len(images)).map(lambda n: None if n == len(images) else n)
    filters = st.one_of(
        st.none(),
        st.just(list(range(folders))),
        st.lists(st.integers(0, folders - 1), unique=True, max_size=folders),
    )
    updates = draw(
        st.lists(
            st.builds(
                UpdateOf,
                image=targets,
                change=changes,
                folders=filters,
                created_by=st.sampled_from(["alice", "bob"]),
                keyed=st.booleans(),
            ),
            min_size=1,
            max_size=6,
        )
    )
    return Batch(folders, images, updates)


def new_update(
    copy: Copy,
    n: int,
    image_id: str,
    change: ImageChange,
    folders: list[str] | None = None,
    created_by: str = "tester",
    keyed: bool = False,
) -> NewUpdate:
    """The example's ``n``-th Update, as the API hands it to the store."""
    new = update(image_id, change, folders)
    operation = replace(new.operation, id=copy.operation(n), created_by=created_by)
    key = IdempotencyKey(created_by, copy.key(n), f"request-{n}") if keyed else None
    return replace(new, operation=operation, idempotency=key)


async def lay_batch(db: asyncpg.Pool, copy: Copy, batch: Batch) -> list[NewUpdate]:
    """The example's images in this copy, and its Updates to accept."""
    await db.executemany(
        "INSERT INTO images (id, folder_id, name, status, created_at)"
        " VALUES ($1, $2, $3, $4, '2020-01-01Z')",
        [
            (copy.image(n), copy.folder(i.folder), i.name, int(i.status))
            for n, i in enumerate(batch.images)
        ],
    )
    for n in range(batch.folders):
        copy.folder(n)  # a folder with no image may still be in a caller's filter
    return [
        new_update(
            copy,
            n,
            copy.gone_image(n) if u.image is None else copy.image(u.image),
            u.change,
            None if u.folders is None else [copy.folder(f) for f in u.folders],
            u.created_by,
            u.keyed,
        )
        for n, u in enumerate(batch.updates)
    ]


async def accept_in_batch(accepts: PostgresAccepts, updates: list[NewUpdate]) -> list[str | None]:
    """The folder of each accepted Update; ``None`` for one refused."""
    return [None if op is None else op.folder_id for op in await accepts.begin_updates(updates)]


async def accept_one_at_a_time(
    accepts: PostgresAccepts, updates: list[NewUpdate], order: Sequence[int]
) -> list[str | None]:
    accepted: list[str | None] = [None] * len(updates)
    for n in order:
        u = updates[n]
        try:
            done = await accepts.begin_update(u.operation, u.change, u.idempotency, u.folders)
        except (NotFound, FailedPrecondition, AlreadyExists, ResourceExhausted) as exc:
            note(f"one at a time: {type(exc).__name__}")
        else:
            accepted[n] = done.operation.folder_id
    return accepted


def one_at_a_time_order(targets: Sequence[object], accepted: Sequence[object]) -> list[int]:
    """The batch's order, except that of the Updates of one image the one the batch accepted
    goes first.

    Which of them a batch accepts is not specified; any one is what one-at-a-time calls in some
    order accept, and that is the order the batch is held to.
    """
    order = list(range(len(targets)))
    for n, ok in enumerate(accepted):
        if ok is not None and targets[n] is not None:
            first = next(m for m in order if targets[m] == targets[n])
            if first != n:
                order.remove(n)
                order.insert(order.index(first), n)
    return order


async def check_accepts_agree(
    accepts: PostgresAccepts, db: asyncpg.Pool, made: list[Copy], batch: Batch
) -> None:
    """Accept the batch in one statement and, on a copy, one Update at a time; the same
    Updates must be accepted and the same rows left."""
    in_batch = await fresh_copy(db, made)
    updates = await lay_batch(db, in_batch, batch)
    accepted = [in_batch.logical(f) for f in await accept_in_batch(accepts, updates)]
    after_batch = await state(db, in_batch)

    one_by_one = Copy()
    made.append(one_by_one)
    updates = await lay_batch(db, one_by_one, batch)
    order = one_at_a_time_order([u.image for u in batch.updates], accepted)
    accepted_alone = [
        one_by_one.logical(f) for f in await accept_one_at_a_time(accepts, updates, order)
    ]
    note("batch accepted " + ("all" if all(accepted) else "some" if any(accepted) else "none"))
    assert accepted == accepted_alone, "accepted (by position, the folder) differ"
    assert after_batch == await state(db, one_by_one)


@PROPERTY
@example(  # a new name taken in the folder; the one taken by the image itself is free
    Batch(
        1,
        [ImageAt(0, "aa", ImageStatus.READY), ImageAt(0, "ab", ImageStatus.READY)],
        [
            UpdateOf(0, ImageChange(name="ab"), None, "alice"),
            UpdateOf(1, ImageChange(name="ab", labels={}), [0], "bob"),
        ],
    )
)
@example(  # an image in each status
    Batch(
        2,
        [ImageAt(n // 3, NAMES[n % 3], status) for n, status in enumerate(STATUSES)],
        [UpdateOf(n, ImageChange(description="d"), None, "bob") for n in range(len(STATUSES))],
    )
)
@example(  # two Updates of one image under different filters, one that hides it, a gone image
    Batch(
        2,
        [ImageAt(0, "aa", ImageStatus.READY), ImageAt(1, "aa", ImageStatus.CREATING)],
        [
            UpdateOf(0, ImageChange(description="1"), [1], "alice"),
            UpdateOf(0, ImageChange(description="2"), [0, 1], "alice"),
            UpdateOf(0, ImageChange(description="3"), None, "bob"),
            UpdateOf(1, ImageChange(description="4"), None, "bob"),
            UpdateOf(None, ImageChange(), [], "bob"),
        ],
    )
)
@given(batch=batches())
async def test_a_batch_accepts_what_one_at_a_time_accepts(
    store: Postgres, db: asyncpg.Pool, copies: list[Copy], batch: Batch
) -> None:
    """Two Updates of one image in a batch are allowed: the batch is compared with the calls
    one at a time in an order that puts the one it accepted first. The folder quota is out of
    reach here (the store's 1000; see the next test)."""
    await check_accepts_agree(store.accepts, db, copies, batch)


@settings(PROPERTY, max_examples=15)
@example(quota=1, folders=[(0, 2)])  # one READY folder, two images, room for one Update
@given(
    quota=st.integers(1, 3),
    # per folder: unfinished operations it already has, images updated in the batch
    folders=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 4)), min_size=1, max_size=2),
)
async def test_a_batch_counts_the_folder_quota_as_one_at_a_time(
    store: Postgres,
    db: asyncpg.Pool,
    copies: list[Copy],
    quota: int,
    folders: list[tuple[int, int]],
) -> None:
    accepts = PostgresAccepts(store.db, max_unfinished_per_folder=quota)
    counted = []
    for in_batch in (True, False):
        if in_batch:
            copy = await fresh_copy(db, copies)
        else:
            copy = Copy()
            copies.append(copy)
        updates = []
        for f, (unfinished, images) in enumerate(folders):
            for n in range(unfinished):
                await db.execute(
                    "INSERT INTO operations (id, kind, image_id, folder_id, description,"
                    " request, published_at) VALUES ($1, 'update_image', $2, $3, '', '{}', now())",
                    copy.operation(f * 10 + n),
                    copy.gone_image(f * 10 + n),
                    copy.folder(f),
                )
            for n in range(images):
                image_id = copy.image(f * 10 + n)
                await db.execute(
                    "INSERT INTO images (id, folder_id, name, status) VALUES ($1, $2, $1, 2)",
                    image_id,
                    copy.folder(f),
                )
                updates.append(
                    new_update(copy, 100 + len(updates), image_id, ImageChange(description="d"))
                )
        if in_batch:
            accepted = await accept_in_batch(accepts, updates)
        else:
            accepted = await accept_one_at_a_time(accepts, updates, range(len(updates)))
        counted.append(Counter(copy.logical(f) for f in accepted if f is not None))
    assert counted[0] == counted[1], "Updates accepted per folder: in a batch, one at a time"


# -- 2. The one-statement Update leaves what the transaction leaves ---------------------------


@dataclass(frozen=True)
class StoredImage:
    folder: int
    name: str
    description: str
    labels: dict[str, str]
    checksum: str
    status: ImageStatus
    created_at: datetime


@dataclass(frozen=True)
class AcceptedUpdate:
    """An accepted Update: ``image`` by position, ``None`` for an image gone meanwhile."""

    image: int | None
    change: ImageChange


@dataclass(frozen=True)
class Delivery:
    """Images, their accepted Updates, and the operation IDs delivered together (positions
    into ``updates``; one past the end is an operation that does not exist)."""

    folders: int
    images: list[StoredImage]
    updates: list[AcceptedUpdate]
    delivered: list[int]


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    folders = draw(st.integers(1, 2))
    images = draw(
        st.lists(
            st.builds(
                StoredImage,
                folder=st.integers(0, folders - 1),
                name=names,
                description=st.just("") | descriptions,
                labels=labels,
                checksum=st.from_regex(r"[0-9a-f]{0,32}", fullmatch=True),
                status=st.sampled_from(STATUSES),
                created_at=times,
            ),
            min_size=1,
            max_size=5,
            unique_by=lambda i: (i.folder, i.name),
        )
    )
    # One unfinished Update per image at most; its image UPDATING, unless changed behind the
    # service's back (the transaction then finishes it with an error).
    updated = draw(st.lists(st.integers(0, len(images) - 1), unique=True, min_size=1, max_size=4))
    images = list(images)
    for n in updated:
        if draw(st.integers(0, 5)):
            images[n] = replace(images[n], status=ImageStatus.UPDATING)
    targets: list[int | None] = list(updated)
    if draw(st.booleans()):
        targets.append(None)
    updates = [AcceptedUpdate(t, draw(changes)) for t in targets]
    extra = draw(st.lists(st.integers(0, len(updates)), max_size=2))  # repeated or unknown IDs
    delivered = draw(st.permutations([*range(len(updates)), *extra]))
    return Delivery(folders, images, updates, delivered)


async def lay_delivery(db: asyncpg.Pool, copy: Copy, delivery: Delivery) -> list[str]:
    """The example's images and accepted Updates in this copy; the IDs delivered."""
    await db.executemany(
        "INSERT INTO images (id, folder_id, name, description, checksum, status, labels,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
        [
            (
                copy.image(n),
                copy.folder(i.folder),
                i.name,
                i.description,
                i.checksum,
                int(i.status),
                json.dumps(i.labels),
                i.created_at,
            )
            for n, i in enumerate(delivery.images)
        ],
    )
    rows = []
    for n, u in enumerate(delivery.updates):
        if u.image is None:
            image_id, folder_id = copy.gone_image(n), copy.folder(0)
        else:
            image_id, folder_id = copy.image(u.image), copy.folder(delivery.images[u.image].folder)
        rows.append((copy.operation(n), image_id, folder_id, json.dumps(u.change.to_json())))
    # Marked published, as delivered operations are.
    await db.executemany(
        "INSERT INTO operations (id, kind, image_id, folder_id, description, created_by,"
        " request, published_at) VALUES ($1, 'update_image', $2, $3, 'Update image', 'tester',"
        " $4::jsonb, now())",
        rows,
    )
    return [copy.operation(n) for n in delivery.delivered]


async def apply_in_transaction(store: Postgres, operation_id: str) -> None:
    """What the executor does with an Update the one statement left to it."""
    async with store.finishes.transaction() as tx:
        claimed = await tx.lock_operation(operation_id)
        if claimed is not None:
            await _apply_update(tx, claimed)


async def apply_in_one_statement(store: Postgres, operation_ids: list[str]) -> list[bool]:
    """The executor's way: one statement for all, the transaction for what it left."""
    finished = await store.finishes.apply_updates(operation_ids)
    for operation_id, done in zip(operation_ids, finished, strict=True):
        if not done:
            await apply_in_transaction(store, operation_id)
    return finished


def transaction_orders(delivery: Delivery) -> Iterator[list[int]]:
    """The delivered order, then every other order of the renames.

    Updates delivered together run concurrently, in no promised order; where renames in one
    folder depend on each other (a chain, ``aa -> ab`` while ``ab -> ba``), the one statement
    may do them in an order other than delivered, and what it leaves is then what the
    transaction leaves in that order.
    """
    delivered = list(dict.fromkeys(delivery.delivered))
    renames = [
        i
        for i, n in enumerate(delivered)
        if n < len(delivery.updates) and delivery.updates[n].change.name is not None
    ]
    for order in itertools.permutations([delivered[i] for i in renames]):
        reordered = list(delivered)
        for i, n in zip(renames, order, strict=True):
            reordered[i] = n
        yield reordered


async def check_updates_agree(
    store: Postgres, db: asyncpg.Pool, made: list[Copy], delivery: Delivery
) -> None:
    """Apply the delivered Updates the executor's way and, on a copy, in the transaction alone;
    the same images and operations must be left."""
    statement_copy = await fresh_copy(db, made)
    delivered = await lay_delivery(db, statement_copy, delivery)
    finished = await apply_in_one_statement(store, delivered)
    left = await state(db, statement_copy)
    note(
        "one statement finished "
        + ("all" if all(finished) else "some" if any(finished) else "none")
    )

    first_expected = None
    for order in transaction_orders(delivery):
        copy = Copy()
        made.append(copy)
        await lay_delivery(db, copy, delivery)
        for n in order:
            await apply_in_transaction(store, copy.operation(n))
        expected = await state(db, copy)
        if expected == left:
            if first_expected is not None:
                note("the one statement renamed in another order than delivered")
            break
        first_expected = first_expected or expected
    else:
        assert left == first_expected, "the one statement left what no transaction order does"

    operations = left["operations"].values()
    taken = [op for op in operations if op["error"] and op["error"][0] is Code.ALREADY_EXISTS]
    if taken:
        note("a new name was taken")
        assert not any(finished), "a taken name leaves the whole batch to the transaction"
    for op in taken:
        image = left["images"][op["image"]]
        n = int(op["image"].removeprefix("image"))
        before = delivery.images[n]
        assert image["status"] is ImageStatus.READY
        assert (image["name"], image["description"], image["labels"], image["revision"]) == (
            before.name,
            before.description,
            before.labels,
            0,
        )


def stored(folder: int, name: str, status: ImageStatus = ImageStatus.UPDATING) -> StoredImage:
    return StoredImage(
        folder, name, "old", {"k": "v"}, "", status, datetime(2020, 1, 1, tzinfo=UTC)
    )


@PROPERTY
@example(  # the new name held by another image; a repeated and an unknown ID
    Delivery(
        1,
        [stored(0, "aa"), stored(0, "ab", ImageStatus.READY), stored(0, "ba")],
        [
            AcceptedUpdate(0, ImageChange(name="ab")),
            AcceptedUpdate(2, ImageChange(description="", labels={})),
        ],
        [0, 1, 2, 1],
    )
)
@example(  # renames in a chain and a swap, in two folders
    Delivery(
        2,
        [stored(0, "aa"), stored(0, "ab"), stored(1, "aa"), stored(1, "ab")],
        [
            AcceptedUpdate(0, ImageChange(name="ab")),
            AcceptedUpdate(1, ImageChange(name="ba")),
            AcceptedUpdate(2, ImageChange(name="ab")),
            AcceptedUpdate(3, ImageChange(name="aa")),
        ],
        [0, 1, 2, 3],
    )
)
@example(  # a chain alone, delivered in the order the transaction cannot do both
    Delivery(
        1,
        [stored(0, "aa"), stored(0, "ab")],
        [AcceptedUpdate(0, ImageChange(name="ab")), AcceptedUpdate(1, ImageChange(name="ba"))],
        [0, 1],
    )
)
@example(  # and in the order it can
    Delivery(
        1,
        [stored(0, "aa"), stored(0, "ab")],
        [AcceptedUpdate(0, ImageChange(name="ab")), AcceptedUpdate(1, ImageChange(name="ba"))],
        [1, 0],
    )
)
@example(  # every field cleared or replaced, with text far from ASCII
    Delivery(
        1,
        [stored(0, "aa")],
        [AcceptedUpdate(0, ImageChange(name="ba", description='é€😀"\\\n', labels={}))],
        [0],
    )
)
@given(delivery=deliveries())
async def test_the_one_statement_update_leaves_what_the_transaction_leaves(
    store: Postgres, db: asyncpg.Pool, copies: list[Copy], delivery: Delivery
) -> None:
    await check_updates_agree(store, db, copies, delivery)


# -- 3. The notification of a finished operation reads as a read ------------------------------


@dataclass(frozen=True)
class Ending:
    """How an operation finishes: with ``response`` (a Create or Update), ``error``, or neither
    (a Delete done). ``pad`` grows a text of it until the payload is about that many bytes."""

    kind: OperationKind
    created_by: str
    created_at: datetime
    response: Image | None
    error: OperationError | None
    pad: tuple[str, str, int] | None


unicode_labels = st.dictionaries(st.text(characters, max_size=20), texts, max_size=4)
responses = st.builds(
    Image,
    id=st.just(""),  # the operation's image, set when laid down
    folder_id=st.just(""),
    name=names,
    description=descriptions,
    checksum=st.from_regex(r"[0-9a-f]{0,32}", fullmatch=True),
    status=st.sampled_from(STATUSES),
    created_at=times,
    labels=unicode_labels,
)
errors = st.builds(
    OperationError, code=st.sampled_from([c for c in Code if c is not Code.OK]), message=texts
)


@st.composite
def endings(draw: st.DrawFn) -> Ending:
    kind = draw(st.sampled_from(OperationKind))
    if kind is OperationKind.DELETE_IMAGE:
        response, error = None, draw(st.none() | errors)
    elif draw(st.booleans()):
        response, error = draw(responses), None
    else:
        response, error = None, draw(errors)
    pads = st.tuples(
        st.sampled_from(["created_by", "result"]),
        st.sampled_from(["x", "é", "€", "😀", '"', "\n", "\x01"]),
        st.integers(NOTIFY_LIMIT - 6, NOTIFY_LIMIT + 6),
    )
    pad = draw(pads) if draw(st.integers(0, 3)) else None
    return Ending(kind, draw(texts), draw(times), response, error, pad)


def json_time(value: datetime) -> str:
    """A timestamptz as PostgreSQL writes it in JSON (UTC sessions: trailing zeros cut)."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    return text + "+00:00"


def payload_size(columns: Mapping[str, Any]) -> int:
    """Bytes of the notification of an operation with these columns, were it sent whole:
    ``json_build_object`` writes ``"key" : value, ...``, a jsonb value ``{"key": value}``."""

    def value(v: Any) -> str:
        if isinstance(v, datetime):
            v = json_time(v)
        return json.dumps(v, ensure_ascii=False)

    text = "{" + ", ".join(f'"{key}" : {value(v)}' for key, v in columns.items()) + "}"
    return len(text.encode())


def columns(
    operation_id: str, image_id: str, folder_id: str, ending: Ending, modified_at: datetime
) -> dict[str, Any]:
    """The operation's columns, in the order of rows.OPERATION_COLUMNS."""
    if ending.response is not None:
        response: Any = ending.response.snapshot()
    else:
        response = None if ending.error else {}
    return {
        "id": operation_id,
        "kind": ending.kind.value,
        "image_id": image_id,
        "folder_id": folder_id,
        "description": DESCRIPTIONS[ending.kind],
        "created_at": ending.created_at,
        "created_by": ending.created_by,
        "modified_at": modified_at,
        "done": True,
        "response": response,
        "error_code": None if ending.error is None else int(ending.error.code),
        "error_message": None if ending.error is None else ending.error.message,
    }


def padded(ending: Ending, operation_id: str, image_id: str, folder_id: str) -> Ending:
    """``ending`` with the operation's IDs, grown to about its ``pad`` bytes (sizes straddling
    the notification limit; modified_at, unknown yet, is counted at its longest)."""
    ending = replace(
        ending,
        response=None
        if ending.response is None
        else replace(ending.response, id=image_id, folder_id=folder_id),
    )
    if ending.pad is None:
        return ending
    where, char, target = ending.pad
    longest = datetime(2000, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    size = payload_size(columns(operation_id, image_id, folder_id, ending, longest))
    cost = len(json.dumps(char, ensure_ascii=False).encode()) - 2
    repeat, rest = divmod(max(target - size, 0), cost)
    more = char * repeat + "x" * rest
    if where == "result" and ending.response is not None:
        grown = replace(ending.response, description=ending.response.description + more)
        return replace(ending, response=grown)
    if where == "result" and ending.error is not None:
        grown_error = replace(ending.error, message=ending.error.message + more)
        return replace(ending, error=grown_error)
    return replace(ending, created_by=ending.created_by + more)


@pytest.fixture
async def notifications(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """Every finished-operation notification, heard on a connection of its own."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database_url)
    await conn.add_listener(CHANNEL, lambda *args: queue.put_nowait(args[-1]))
    yield queue
    await conn.close()


async def told(queue: asyncio.Queue[str], wanted: Sequence[str]) -> dict[str, str]:
    """The payloads of the ``wanted`` operations, by ID (others' are passed over)."""
    got: dict[str, str] = {}
    async with asyncio.timeout(10):
        while set(wanted) - got.keys():
            payload = await queue.get()
            operation_id = json.loads(payload)["id"] if payload.startswith("{") else payload
            if operation_id in wanted:
                got[operation_id] = payload
    return got


async def check_told_as_read(
    store: Postgres,
    db: asyncpg.Pool,
    made: list[Copy],
    queue: asyncio.Queue[str],
    ending_list: list[Ending],
) -> None:
    """Finish the operations in one transaction; each one's notification must read as a read
    of it, or be its ID alone when the whole would not fit."""
    copy = await fresh_copy(db, made)
    laid = []
    for n, ending in enumerate(ending_list):
        operation_id, image_id, folder_id = copy.operation(n), copy.image(n), copy.folder(n)
        ending = padded(ending, operation_id, image_id, folder_id)
        await db.execute(
            "INSERT INTO operations (id, kind, image_id, folder_id, description, created_at,"
            " created_by, request, published_at) VALUES ($1, $2, $3, $4, $5, $6, $7, '{}', now())",
            operation_id,
            ending.kind.value,
            image_id,
            folder_id,
            DESCRIPTIONS[ending.kind],
            ending.created_at,
            ending.created_by,
        )
        laid.append((operation_id, image_id, folder_id, ending))
    async with store.finishes.transaction() as tx:
        for n, (operation_id, _, _, ending) in enumerate(laid):
            if ending.response is None and ending.error is None:
                await tx.finish_deleted(operation_id)
            else:
                # Every other failure ends as a dead letter: the column it sets (migration
                # 0011) is not part of what is told, so the notification reads the same.
                dead_lettered = ending.error is not None and n % 2 == 1
                if dead_lettered:
                    note("dead-lettered")
                await tx.finish(
                    operation_id,
                    response=ending.response,
                    error=ending.error,
                    dead_lettered=dead_lettered,
                )
    payloads = await told(queue, [operation_id for operation_id, *_ in laid])
    read = await store.reads.get_operations([operation_id for operation_id, *_ in laid])
    for (operation_id, image_id, folder_id, ending), operation in zip(laid, read, strict=True):
        assert operation is not None
        size = payload_size(
            columns(operation_id, image_id, folder_id, ending, operation.modified_at)
        )
        payload = payloads[operation_id]
        heard: tuple[str, Operation | None] = finished_operation(payload)
        if size >= NOTIFY_LIMIT:
            note("announced by its ID")
            assert heard == (operation_id, None)
        else:
            note("told whole")
            assert heard == (operation_id, operation)
            assert len(payload.encode()) == size, "the payload is not what was counted"
        if abs(size - NOTIFY_LIMIT) <= 2:
            note("within 2 bytes of the limit")


@PROPERTY
@example(
    [
        Ending(
            OperationKind.UPDATE_IMAGE,
            "tester",
            datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
            Image(
                "",
                "",
                "aa",
                "ü",
                "",
                ImageStatus.READY,
                datetime(2024, 5, 1, tzinfo=UTC),
                {"é": "ü"},
            ),
            None,
            ("result", "€", NOTIFY_LIMIT - 1),
        ),
        Ending(
            OperationKind.DELETE_IMAGE,
            "tester",
            datetime(2024, 5, 1, tzinfo=UTC),
            None,
            None,
            ("created_by", "😀", NOTIFY_LIMIT),
        ),
        Ending(
            OperationKind.CREATE_IMAGE,
            "tester",
            datetime(2024, 5, 1, tzinfo=UTC),
            None,
            OperationError(Code.NOT_FOUND, "gone"),
            None,
        ),
    ]
)
@given(ending_list=st.lists(endings(), min_size=1, max_size=3))
async def test_a_finished_operation_is_told_as_it_reads(
    store: Postgres,
    db: asyncpg.Pool,
    copies: list[Copy],
    notifications: asyncio.Queue[str],
    ending_list: list[Ending],
) -> None:
    await check_told_as_read(store, db, copies, notifications, ending_list)


# -- The checks catch a SQL statement that drifts ---------------------------------------------


def mutant(sql: str, old: str, new: str) -> str:
    assert old in sql, f"the statement changed: update this mutant ({old!r} not found)"
    return sql.replace(old, new)


async def test_a_batch_that_ignores_taken_names_is_caught(
    store: Postgres, db: asyncpg.Pool, copies: list[Copy], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = mutant(
        accept_module._BEGIN_UPDATES, "(fresh.name IS NULL OR NOT EXISTS", "(TRUE OR NOT EXISTS"
    )
    monkeypatch.setattr(accept_module, "_BEGIN_UPDATES", wrong)
    batch = Batch(
        1,
        [ImageAt(0, "aa", ImageStatus.READY), ImageAt(0, "ab", ImageStatus.READY)],
        [UpdateOf(0, ImageChange(name="ab"), None, "alice")],
    )
    with pytest.raises(AssertionError, match="accepted"):
        await check_accepts_agree(store.accepts, db, copies, batch)


async def test_a_batch_that_keeps_the_keys_of_refused_updates_is_caught(
    store: Postgres, db: asyncpg.Pool, copies: list[Copy], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The keys of every Update the batch considered, not only of those it accepted.
    wrong = mutant(
        accept_module._BEGIN_UPDATES,
        "operation_id FROM image WHERE key IS NOT NULL",
        "operation_id FROM fresh WHERE key IS NOT NULL",
    )
    monkeypatch.setattr(accept_module, "_BEGIN_UPDATES", wrong)
    batch = Batch(
        1,
        [ImageAt(0, "aa", ImageStatus.READY), ImageAt(0, "ab", ImageStatus.CREATING)],
        [UpdateOf(n, ImageChange(description="d"), None, "alice", keyed=True) for n in (0, 1)],
    )
    with pytest.raises(AssertionError, match="keys"):
        await check_accepts_agree(store.accepts, db, copies, batch)


async def test_a_statement_that_keeps_the_labels_is_caught(
    store: Postgres, db: asyncpg.Pool, copies: list[Copy], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = mutant(
        finish_module._APPLY_UPDATES,
        "labels = coalesce(operation.request->'labels', images.labels)",
        "labels = images.labels",
    )
    monkeypatch.setattr(finish_module, "_APPLY_UPDATES", wrong)
    delivery = Delivery(1, [stored(0, "aa")], [AcceptedUpdate(0, ImageChange(labels={}))], [0])
    with pytest.raises(AssertionError, match="no transaction order"):
        await check_updates_agree(store, db, copies, delivery)
