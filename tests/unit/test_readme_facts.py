"""What the README states about the code, held to the code: every command of
``python -m service`` is named, and the ``doctor`` sample counts the migrations this version
ships."""

from __future__ import annotations

import re

import pytest

from service.entrypoints.cli.service import cli
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("command", sorted(cli.commands))
def test_every_command_of_python_m_service_is_in_the_readme(command: str) -> None:
    assert f"python -m service {command}" in README


def test_the_doctor_sample_counts_the_migrations_shipped() -> None:
    shipped = len(list((ROOT / "migrations").glob("*.sql")))
    [sample] = re.findall(r"migrations current\s+(\d+) of (\d+) applied", README)
    assert sample == (str(shipped), str(shipped))
