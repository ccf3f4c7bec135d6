"""A mistyped command line is one line on stderr that says what is wrong and which --help to
read, and exit code 2; --help itself still prints the usage and exits 0."""

from __future__ import annotations

import pytest

from service.entrypoints.cli.failures import run_cli
from service.entrypoints.cli.service import cli
from service.entrypoints.cli.workers import workers


@pytest.mark.parametrize(
    ("command", "prog", "args", "line"),
    [
        (cli, "python -m service", ["image", "create", "--folder", "f"],
         "error: Missing option '--name' (see python -m service image create --help)"),
        (cli, "python -m service", ["nosuch"],
         "error: No such command 'nosuch' (see python -m service --help)"),
        (cli, "python -m service", ["sa", "key", "create"],
         "error: Missing argument 'SERVICE_ACCOUNT_ID'"
         " (see python -m service sa key create --help)"),
        (workers, "python -m workers", ["--bogus"],
         "error: No such option '--bogus' (see python -m workers --help)"),
    ],
)  # fmt: skip
def test_a_usage_error_is_one_line_and_exit_2(command, prog, args, line, capsys):
    with pytest.raises(SystemExit) as exited:
        run_cli(command, prog, args)
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line]
    assert captured.out == ""


def test_help_still_prints_the_usage_and_exits_0(capsys):
    with pytest.raises(SystemExit) as exited:
        run_cli(cli, "python -m service", ["sa", "--help"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: python -m service sa ")
