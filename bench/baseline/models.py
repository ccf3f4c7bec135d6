"""The baseline's schema: SQLAlchemy declarative models of images and operations."""

from __future__ import annotations

import enum
import secrets
import string
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Boolean, DateTime, ForeignKey, SmallInteger, String
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

_ALPHABET = string.ascii_lowercase + string.digits


def new_id(prefix: str) -> str:
    """A 20-character ID: a 3-letter prefix, then 17 random characters of ``[a-z0-9]``."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(17))


def utcnow() -> datetime:
    return datetime.now(UTC)


class ImageStatus(enum.IntEnum):
    """The same numbers as ``Image.Status`` on the wire."""

    STATUS_UNSPECIFIED = 0
    CREATING = 1
    READY = 2
    ERROR = 3
    DELETING = 4
    UPDATING = 5


class Base(DeclarativeBase):
    pass


class Image(Base):
    __tablename__ = "images"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    folder_id: Mapped[str] = mapped_column(String(50))
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(String(1024), default="")
    labels: Mapped[dict[str, str]] = mapped_column(JSONB, default=dict)
    status: Mapped[int] = mapped_column(SmallInteger, default=ImageStatus.CREATING)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Operation(Base):
    __tablename__ = "operations"

    id: Mapped[str] = mapped_column(String(20), primary_key=True)
    description: Mapped[str] = mapped_column(String(256))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(50))
    modified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    # The changed fields of the Update: any of "name", "description", "labels".
    request: Mapped[dict[str, Any]] = mapped_column(JSONB)
    idempotency_key: Mapped[str | None] = mapped_column(String(128), unique=True)
