"""Resource and operation IDs: 20 characters of ``[a-z0-9]``, a 3-letter kind prefix first."""

from __future__ import annotations

import re
import secrets
import string

ID_LENGTH = 20
_ALPHABET = string.ascii_lowercase + string.digits
_RANDOM_LENGTH = ID_LENGTH - 3

IMAGE_PREFIX = "img"
OPERATION_PREFIX = "opn"
_PREFIX = re.compile(r"[a-z]{3}")


def new_id(prefix: str) -> str:
    """A fresh ID: the prefix, then random characters from a CSPRNG (about 88 bits)."""
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"ID prefix must be 3 lowercase letters, got {prefix!r}")
    # One draw of random bytes rather than a system call per character. Bytes of 252 and
    # above are skipped, so every character of the alphabet is equally likely (252 = 7 x 36).
    chars: list[str] = []
    while len(chars) < _RANDOM_LENGTH:
        chars += [_ALPHABET[b % 36] for b in secrets.token_bytes(_RANDOM_LENGTH + 8) if b < 252]
    return prefix + "".join(chars[:_RANDOM_LENGTH])
