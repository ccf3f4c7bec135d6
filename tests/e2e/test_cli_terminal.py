"""The command-line client in a real terminal (tmux): the progress line is drawn, redrawn in
place while the operation runs, and erased when it ends, leaving the result and a clean
prompt."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.client import folder, unique
from tests.support import ROOT, BlobServer, base_env, eventually

TMUX = shutil.which("tmux")
pytestmark = pytest.mark.skipif(
    TMUX is None, reason="tmux is not installed (.ci/run installs it with apt-get)"
)


class Terminal:
    """A tmux server of the test's own (private socket) running one shell."""

    def __init__(self, socket: Path, env: dict[str, str]) -> None:
        self.socket = socket
        self.env = env

    def tmux(self, *args: str) -> str:
        assert TMUX is not None
        return subprocess.run(
            [TMUX, "-S", str(self.socket), "-f", "/dev/null", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout

    def start(self) -> None:
        self.tmux("new-session", "-d", "-s", "cli", "-x", "150", "-y", "40",
                  "bash --noprofile --norc")  # fmt: skip

    def type(self, line: str) -> None:
        self.tmux("send-keys", "-t", "cli", line, "Enter")

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "cli")

    def close(self) -> None:
        subprocess.run(
            [str(TMUX), "-S", str(self.socket), "kill-server"], capture_output=True, timeout=10
        )


@pytest.fixture
def terminal(tmp_path: Path, api, admin_token) -> Iterator[Terminal]:
    env = base_env(IMAGES_ENDPOINT=api.address, IMAGES_TOKEN=admin_token, TERM="xterm-256color")
    made = Terminal(tmp_path / f"tmux-{uuid.uuid4().hex[:6]}.sock", env)
    made.start()
    yield made
    made.close()


def progress_lines(screen: str) -> list[str]:
    return [line for line in screen.splitlines() if "creating opn" in line]


async def test_the_progress_line_redraws_in_place_and_ends_cleanly(terminal, workers):
    gate = await BlobServer().start()  # the download waits for the gate: time to watch
    try:
        name = unique("tty")
        terminal.type(
            f"{sys.executable} -m service image create --folder {folder()} --name {name}"
            f" --uri {gate.url('/gated/4096')}; echo EXIT=$?"
        )

        async def frame() -> str | None:
            lines = progress_lines(terminal.screen())
            return lines[0] if lines and "image CREATING" in lines[0] else None

        first = await eventually(frame, timeout=60, what="the progress line")
        frames = {first}

        async def redrawn() -> bool:
            screen = terminal.screen()
            lines = progress_lines(screen)
            assert len(lines) == 1, screen  # redrawn in place, never a second line
            frames.add(lines[0])
            return any("0:01" in f or "0:02" in f for f in frames) and len(frames) >= 3

        await eventually(redrawn, timeout=30, interval=0.1, what="the line to be redrawn")
        # A spinner, the operation, the image's status and the elapsed time, on one line.
        assert "image CREATING" in first
        assert "0:0" in first

        gate.release()

        async def finished() -> str | None:
            screen = terminal.screen()
            return screen if "EXIT=0" in screen else None

        screen = await eventually(finished, timeout=60, what="the command to finish")
        print(f"first frame: {first}\nlast screen:\n{screen.rstrip()}")
        assert progress_lines(screen) == []  # the progress line is gone
        assert "READY" in screen
        assert name in screen
        lines = screen.rstrip().splitlines()
        assert lines[-2:] == ["EXIT=0", lines[-1]]
        assert lines[-1].rstrip().endswith(("$", "#"))  # back at a clean prompt
    finally:
        await gate.close()
        await asyncio.sleep(0)


async def test_ctrl_c_while_waiting_names_the_operation_that_goes_on(terminal, workers, images):
    gate = await BlobServer().start()  # the download waits for the gate
    try:
        terminal.type(
            f"{sys.executable} -m service image create --folder {folder()} --name {unique('tty')}"
            f" --uri {gate.url('/gated/4096')}; echo EXIT=$?"
        )

        async def waiting() -> str | None:
            lines = progress_lines(terminal.screen())
            return lines[0] if lines and "image CREATING" in lines[0] else None

        line = await eventually(waiting, timeout=60, what="the progress line")
        operation_id = line.split("creating ", 1)[1].split()[0]
        terminal.tmux("send-keys", "-t", "cli", "C-c")

        async def interrupted() -> str | None:
            screen = terminal.screen()
            return screen if "EXIT=130" in screen else None

        screen = await eventually(interrupted, timeout=30, what="the command to stop")
        print(screen.rstrip())
        assert (
            f"interrupted; operation {operation_id} goes on"
            f" (python -m service operation wait {operation_id})"
        ) in " ".join(screen.split())  # the terminal may wrap the line
        gate.release()
        # It did go on: the operation it named finishes, waited for as the line says.
        terminal.type(f"{sys.executable} -m service operation wait {operation_id}; echo WAITED=$?")

        async def waited() -> str | None:
            screen = terminal.screen()
            done = [line for line in screen.splitlines() if line.startswith("WAITED=")]
            return done[0] if done else None

        assert await eventually(waited, timeout=90, what="operation wait to finish") == "WAITED=0"
        screen = terminal.screen()
        assert "READY" in screen.split("EXIT=130", 1)[1]
    finally:
        await gate.close()
