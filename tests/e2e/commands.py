"""Running the command-line entry points as a person would: ``python -m service ...`` and
``python -m workers ...`` as child processes, their exit code and output captured."""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import dataclass
from typing import Any

from tests.support import ROOT, base_env


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


async def run(module: str, *args: str, env: dict[str, str], timeout: float = 90.0) -> Ran:
    """``python -m module args`` with ``env`` (on top of the test's environment, less its
    DATABASE_/AMQP_ variables). Async: the test's own servers (the blob server) keep serving
    while it runs."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        env=base_env(**env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Ran(proc.returncode, out.decode(), err.decode())


def assert_one_line_failure(ran: Ran, *expected: str) -> str:
    """Exit code non-zero, exactly one line on stderr containing ``expected``, and no
    traceback anywhere. Returns the line."""
    assert ran.code != 0, ran
    assert "Traceback" not in ran.stdout + ran.stderr, ran
    assert len(ran.error_lines) == 1, ran.stderr
    [line] = ran.error_lines
    assert line.startswith("error: "), line
    for text in expected:
        assert text in line, line
    return line
