"""The statements kept in ``.sql`` files, as they are sent: what ``pg_stat_activity`` shows of
a statement (its first 1 KiB by default) names the tables it locks, so a session waiting in one
can be told apart by an operator (and by the tests that wait for one to be blocked)."""

from __future__ import annotations

import pytest

from service.adapters.postgres.accept import _BEGIN_UPDATES
from service.adapters.postgres.database import load_sql
from service.adapters.postgres.finish import _APPLY_UPDATES

SHOWN = 1024  # track_activity_query_size's default


@pytest.mark.parametrize(
    ("statement", "locks"),
    [(_BEGIN_UPDATES, "FROM images"), (_APPLY_UPDATES, "FROM operations")],
    ids=["begin_updates", "apply_updates"],
)
def test_the_tables_a_statement_locks_are_within_what_pg_stat_activity_shows(
    statement: str, locks: str
) -> None:
    assert 0 <= statement.find(locks) < SHOWN - len(locks), statement[:SHOWN]


def test_comments_blank_lines_and_indentation_are_not_sent() -> None:
    for name in ("begin_updates.sql", "apply_updates.sql"):
        for line in load_sql(name).splitlines():
            assert line, name
            assert line == line.strip(), line
            assert not line.startswith("--"), line
