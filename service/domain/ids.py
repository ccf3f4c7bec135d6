"""Resource and operation IDs: 20 characters of ``[a-z0-9]``, a 3-letter kind prefix first."""

from __future__ import annotations

import re
import secrets
import string

ID_LENGTH = 20
_ALPHABET = string.ascii_lowercase + string.digits

IMAGE_PREFIX = "img"
OPERATION_PREFIX = "opn"
_PREFIX = re.compile(r"[a-z]{3}")


def new_id(prefix: str) -> str:
    """A fresh ID: the prefix, then random characters from a CSPRNG (about 88 bits)."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"ID prefix must be 3 lowercase letters, got {prefix!r}")
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(ID_LENGTH - 3))
