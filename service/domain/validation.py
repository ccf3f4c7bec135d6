"""Request validation by the rules of the public API. Pure functions over plain values.

Each check appends to a list of field violations; a request with any violation is refused as a
whole with ``InvalidArgument`` naming every offending field.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

from service.domain.errors import FieldViolation, InvalidArgument
from service.domain.model import ImageChange, NewImage

IMAGE_ID = re.compile(r"[a-z][a-z0-9]*")
FOLDER_ID = re.compile(r"[a-z][a-z0-9.-]*")
NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_KEY = re.compile(r"[a-z][-_0-9a-z]*")
LABEL_VALUE = re.compile(r"[-_0-9a-z]*")

MAX_FOLDER_ID = 50
MAX_DESCRIPTION = 1024
MAX_URI = 1024
MAX_LABELS = 64
MAX_LABEL_KEY = 63
MAX_LABEL_VALUE = 63
MAX_OPERATION_ID = 50
MAX_PAGE_SIZE = 1000
DEFAULT_PAGE_SIZE = 20
UPDATABLE_PATHS = ("name", "description", "labels")


class Violations:
    """Collects field violations; ``raise_if_any`` ends validation."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items)


def _matches(pattern: re.Pattern[str], value: str) -> bool:
    return pattern.fullmatch(value) is not None


def check_image_id(v: Violations, value: str, field: str = "image_id") -> None:
    if len(value) != 20 or not _matches(IMAGE_ID, value):
        v.add(field, "must be 20 characters: a lowercase letter, then lowercase letters or digits")


def check_folder_id(v: Violations, value: str, field: str = "folder_id") -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > MAX_FOLDER_ID or not _matches(FOLDER_ID, value):
        v.add(
            field,
            f"must be at most {MAX_FOLDER_ID} characters: a lowercase letter, "
            "then lowercase letters, digits, '.' or '-'",
        )


def check_name(v: Violations, value: str, field: str = "name") -> None:
    if not 2 <= len(value) <= 63 or not _matches(NAME, value):
        v.add(
            field,
            "invalid resource name: 2-63 characters, lowercase letters, digits and '-', "
            "starting with a letter and not ending with '-'",
        )


def check_description(v: Violations, value: str, field: str = "description") -> None:
    if len(value) > MAX_DESCRIPTION:
        v.add(field, f"must be at most {MAX_DESCRIPTION} characters")
    elif "\x00" in value:
        v.add(field, "must not contain NUL characters")


def check_uri(v: Violations, value: str, field: str = "uri") -> None:
    if not value:
        v.add(field, "is required")
        return
    if len(value) > MAX_URI:
        v.add(field, f"must be at most {MAX_URI} characters")
        return
    # urlsplit silently drops tabs and newlines and strips spaces: refuse them up front so
    # what is stored is exactly what is fetched.
    if any(ch.isspace() or not ch.isprintable() for ch in value):
        v.add(field, "must not contain spaces or control characters")
        return
    try:
        parts = urlsplit(value)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        v.add(field, "is not a valid URL")
        return
    if parts.scheme not in ("http", "https") or not host:
        v.add(field, "must be an http or https URL with a host")


def check_labels(v: Violations, labels: Mapping[str, str], field: str = "labels") -> None:
    if len(labels) > MAX_LABELS:
        v.add(field, f"must have at most {MAX_LABELS} entries")
        return
    for key, value in sorted(labels.items()):
        if not 1 <= len(key) <= MAX_LABEL_KEY or not _matches(LABEL_KEY, key):
            v.add(
                field,
                f"invalid key {key[:80]!r}: 1-{MAX_LABEL_KEY} characters, a lowercase letter, "
                "then lowercase letters, digits, '-' or '_'",
            )
        elif len(value) > MAX_LABEL_VALUE or not _matches(LABEL_VALUE, value):
            v.add(
                f"{field}[{key}]",
                f"invalid value: at most {MAX_LABEL_VALUE} characters, "
                "lowercase letters, digits, '-' or '_'",
            )


def check_operation_id(v: Violations, value: str, field: str = "operation_id") -> None:
    if not value:
        v.add(field, "is required")
    elif len(value) > MAX_OPERATION_ID:
        v.add(field, f"must be at most {MAX_OPERATION_ID} characters")
    elif not all(33 <= ord(ch) <= 126 for ch in value):
        v.add(field, "must be printable ASCII without spaces")


def page_size(v: Violations, value: int, field: str = "page_size") -> int:
    """The page size to use: 0 means the default."""
    if not 0 <= value <= MAX_PAGE_SIZE:
        v.add(field, f"must be between 0 and {MAX_PAGE_SIZE}")
        return DEFAULT_PAGE_SIZE
    return value or DEFAULT_PAGE_SIZE


def validate_image_id(image_id: str) -> None:
    v = Violations()
    check_image_id(v, image_id)
    v.raise_if_any()


def validate_operation_id(operation_id: str) -> None:
    v = Violations()
    check_operation_id(v, operation_id)
    v.raise_if_any()


def validate_new_image(request: NewImage) -> None:
    v = Violations()
    check_folder_id(v, request.folder_id)
    check_name(v, request.name)
    check_description(v, request.description)
    check_uri(v, request.uri)
    check_labels(v, request.labels)
    v.raise_if_any()


def resolve_update(
    image_id: str,
    mask_paths: Sequence[str] | None,
    name: str,
    description: str,
    labels: Mapping[str, str],
) -> ImageChange:
    """Turn an Update request into the change it asks for, validating every field it sets.

    With a mask, exactly the listed paths change (an empty value clears the field where
    empty is allowed; ``*`` stands for all three). Without one, the populated fields change.
    """
    v = Violations()
    check_image_id(v, image_id)
    if mask_paths is None:
        paths = {
            path
            for path, populated in (
                ("name", name),
                ("description", description),
                ("labels", labels),
            )
            if populated
        }
    else:
        paths = set()
        for path in mask_paths:
            if path == "*":
                if len(mask_paths) > 1:
                    v.add("update_mask", "'*' cannot be combined with other paths")
                paths.update(UPDATABLE_PATHS)
            elif path in UPDATABLE_PATHS:
                paths.add(path)
            else:
                v.add(
                    "update_mask",
                    f"unknown path {path[:80]!r}; allowed: {', '.join(UPDATABLE_PATHS)}",
                )
    if "name" in paths:
        check_name(v, name)
    if "description" in paths:
        check_description(v, description)
    if "labels" in paths:
        check_labels(v, labels)
    v.raise_if_any()
    return ImageChange(
        name=name if "name" in paths else None,
        description=description if "description" in paths else None,
        labels=dict(labels) if "labels" in paths else None,
    )


MAX_IDEMPOTENCY_KEY = 128


def validate_idempotency_key(value: str) -> None:
    """A client's retry key: 1-128 printable ASCII characters (a UUID, customarily)."""
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not all(33 <= ord(ch) <= 126 for ch in value):
        raise InvalidArgument(
            [
                FieldViolation(
                    "idempotency-key",
                    f"must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces",
                )
            ]
        )
