"""Fixtures of the compatibility tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.sdk_venv import sdk_python


@pytest.fixture(scope="session")
def public_python() -> Path:
    """An interpreter of a venv with the official SDK (see ``sdk_venv.sdk_python``)."""
    return sdk_python()
