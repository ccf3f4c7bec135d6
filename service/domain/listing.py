"""List queries of the public API: the filter grammar, ``order_by``, and keyset positions.

Filter grammar (the public one)::

    filter    := condition ( "AND" condition )*
    condition := field operator value
    field     := "id" | "name"
    operator  := "=" (equals) | ":" (contains)
    value     := '"' text '"' | "'" text "'"     text: any characters; \\ escapes the next one

Everything here is plain data: the store turns conditions into SQL with every value a
parameter, so no user text ever becomes SQL.
"""

from __future__ import annotations

import enum
import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from service.domain.errors import FieldViolation, InvalidArgument
from service.domain.paging import decode_page_token, encode_page_token, invalid_page_token

MAX_FILTER_LENGTH = 1000
MAX_CONDITIONS = 10
FILTER_FIELDS = ("id", "name")
ORDER_FIELDS = {"id": "id", "name": "name", "createdAt": "created_at"}


class Operator(enum.StrEnum):
    EQUALS = "="
    CONTAINS = ":"


@dataclass(frozen=True)
class Condition:
    field: str
    operator: Operator
    value: str


@dataclass(frozen=True)
class Ordering:
    """Sort by ``field`` (a name of ``ORDER_FIELDS``), then by ID, in one direction."""

    field: str = "id"
    descending: bool = False

    @property
    def column(self) -> str:
        return ORDER_FIELDS[self.field]

    def __str__(self) -> str:
        return f"{self.field} {'desc' if self.descending else 'asc'}"


def _filter_error(description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation("filter", description)])


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<word>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>[=:])
      | (?P<quote>["'])
    )""",
    re.VERBOSE,
)


def _read_quoted(text: str, start: int, quote: str) -> tuple[str, int]:
    """The unescaped text of a quoted value opened at ``start``; returns it and the end."""
    out: list[str] = []
    i = start
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            if i + 1 >= len(text):
                break
            out.append(text[i + 1])
            i += 2
            continue
        if ch == quote:
            return "".join(out), i + 1
        out.append(ch)
        i += 1
    raise _filter_error(f"unterminated quoted value starting at position {start}")


def parse_filter(text: str) -> list[Condition]:
    """The conditions of a filter expression; an empty filter has none."""
    if len(text) > MAX_FILTER_LENGTH:
        raise _filter_error(f"must be at most {MAX_FILTER_LENGTH} characters")
    if not text.strip():
        return []
    conditions: list[Condition] = []
    pos = 0
    while True:
        match = _TOKEN.match(text, pos)
        field = match.group("word") if match else None
        if match is None or field is None:
            raise _filter_error(f"expected a field name at position {pos}")
        if field not in FILTER_FIELDS:
            raise _filter_error(
                f"unknown field {field[:40]!r}; filterable: {', '.join(FILTER_FIELDS)}"
            )
        pos = match.end()
        match = _TOKEN.match(text, pos)
        operator = match.group("op") if match else None
        if match is None or operator is None:
            raise _filter_error(f"expected '=' or ':' after {field!r} at position {pos}")
        pos = match.end()
        match = _TOKEN.match(text, pos)
        quote = match.group("quote") if match else None
        if match is None or quote is None:
            raise _filter_error(f"expected a quoted value at position {pos}")
        value, pos = _read_quoted(text, match.end(), quote)
        if "\x00" in value:
            raise _filter_error("values must not contain NUL characters")
        conditions.append(Condition(field, Operator(operator), value))
        if len(conditions) > MAX_CONDITIONS:
            raise _filter_error(f"must have at most {MAX_CONDITIONS} conditions")
        rest = text[pos:]
        if not rest.strip():
            return conditions
        match = _TOKEN.match(text, pos)
        if match is None or match.group("word") != "AND":
            raise _filter_error(f"expected AND at position {pos}")
        pos = match.end()


_ORDER = re.compile(r"\s*(?P<field>\w+)(?:\s+(?P<dir>(?i:asc|desc)))?\s*")


def parse_order_by(text: str) -> Ordering:
    """``id``, ``name`` or ``createdAt``, optionally followed by ``asc`` or ``desc``."""
    if not text.strip():
        return Ordering()
    match = _ORDER.fullmatch(text)
    if match is None or match.group("field") not in ORDER_FIELDS:
        raise InvalidArgument(
            [
                FieldViolation(
                    "order_by",
                    "must be one of id, name, createdAt, optionally followed by asc or desc",
                )
            ]
        )
    return Ordering(match.group("field"), (match.group("dir") or "").lower() == "desc")


def _query_digest(folder_id: str, conditions: list[Condition], ordering: Ordering) -> str:
    text = repr(
        (folder_id, [(c.field, c.operator.value, c.value) for c in conditions], str(ordering))
    )
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class ImageQuery:
    """One page request of ``ImageService.List``, validated."""

    folder_id: str
    conditions: list[Condition]
    ordering: Ordering
    after: tuple[Any, str] | None = None

    def next_token(self, last_key: Any, last_id: str) -> str:
        """A token for the page after the row with sort key ``last_key`` and ID ``last_id``."""
        key = last_key.isoformat() if isinstance(last_key, datetime) else last_key
        return encode_page_token(
            {
                "q": _query_digest(self.folder_id, self.conditions, self.ordering),
                "k": [key, last_id],
            }
        )


def image_query(folder_id: str, filter_text: str, order_by: str, page_token: str) -> ImageQuery:
    """Parse a List request; a token must come from the same folder, filter and order."""
    conditions = parse_filter(filter_text)
    ordering = parse_order_by(order_by)
    after = None
    if page_token:
        position = decode_page_token(page_token)
        key = position.get("k")
        if (
            position.get("q") != _query_digest(folder_id, conditions, ordering)
            or not isinstance(key, list)
            or len(key) != 2
            or not isinstance(key[1], str)
            or not isinstance(key[0], str)
        ):
            raise invalid_page_token()
        sort_value: Any = key[0]
        if ordering.field == "createdAt":
            try:
                sort_value = datetime.fromisoformat(key[0])
            except ValueError as exc:
                raise invalid_page_token() from exc
        after = (sort_value, key[1])
    return ImageQuery(folder_id, conditions, ordering, after)


@dataclass(frozen=True)
class OperationQuery:
    """One page request of ``ImageService.ListOperations``: newest first."""

    image_id: str
    after: tuple[datetime, str] | None = None

    def next_token(self, created_at: datetime, operation_id: str) -> str:
        return encode_page_token(
            {"image": self.image_id, "k": [created_at.isoformat(), operation_id]}
        )


def operation_query(image_id: str, page_token: str) -> OperationQuery:
    after = None
    if page_token:
        position = decode_page_token(page_token)
        key = position.get("k")
        if (
            position.get("image") != image_id
            or not isinstance(key, list)
            or len(key) != 2
            or not all(isinstance(part, str) for part in key)
        ):
            raise invalid_page_token()
        try:
            after = (datetime.fromisoformat(key[0]), key[1])
        except ValueError as exc:
            raise invalid_page_token() from exc
    return OperationQuery(image_id, after)
