"""The command line's tables: aligned columns, and no line ending in the spaces that pad them."""

from __future__ import annotations

import pytest

from service.entrypoints.cli.output import print_record, print_rows


def test_a_table_of_rows_has_no_trailing_spaces(capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        {"id": "img1", "name": "a-rather-long-name", "status": "READY"},
        {"id": "img2", "name": "b", "status": None},
    ]
    print_rows(rows, ("id", "name", "status"), "table")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert all(line == line.rstrip() for line in lines), lines
    assert lines[0].split() == ["ID", "NAME", "STATUS"]
    # Still columns: the third starts at the same place on every line.
    starts = {line.index(word) for line, word in zip(lines, ("STATUS", "READY"), strict=False)}
    assert len(starts) == 1


def test_a_record_has_no_trailing_spaces(capsys: pytest.CaptureFixture[str]) -> None:
    print_record({"id": "img1", "description": "", "labels": None}, "table")
    lines = capsys.readouterr().out.splitlines()
    assert lines
    assert all(line == line.rstrip() for line in lines), lines
