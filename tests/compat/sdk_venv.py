"""The virtualenv with the official SDK (``yandexcloud``), which pins protobuf < 7 and so
cannot share ours, and how to run its interpreter without it seeing this repository."""

from __future__ import annotations

import asyncio
import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support import ROOT

SDK_REQUIREMENT = "yandexcloud==0.413.0"
SDK_PROBE = "import yandexcloud, yandex.cloud.baremetal.v1alpha.image_service_pb2"
VENV = ROOT / ".venv-public-sdk"


def clean_env() -> dict[str, str]:
    """Our environment minus whatever could make the other interpreter see our packages."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE_VIRTUALENV"))
    }
    env["PYTHONNOUSERSITE"] = "1"
    return env


async def run(*argv: str | Path, timeout: float) -> tuple[int, str, str]:
    """Runs a command in a neutral directory (no ``yandex`` package beside it)."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv),
        cwd="/",
        env=clean_env(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"{argv} did not finish in {timeout}s") from None
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def has_sdk(python: Path) -> bool:
    if not python.exists():
        return False
    probe = subprocess.run(
        [python, "-I", "-c", SDK_PROBE], cwd="/", env=clean_env(), capture_output=True, check=False
    )
    return probe.returncode == 0


def sdk_python() -> Path:
    """An interpreter of a venv with the SDK: $PUBLIC_SDK_PYTHON, or .venv-public-sdk (made
    on first use, reused after)."""
    if given := os.environ.get("PUBLIC_SDK_PYTHON"):
        python = Path(given)
        assert has_sdk(python), f"PUBLIC_SDK_PYTHON={given} cannot `{SDK_PROBE}`"
        return python

    python = VENV / "bin" / "python"
    VENV.mkdir(exist_ok=True)
    # Another test run may be building the same venv: take turns.
    with open(VENV / ".create.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if has_sdk(python):
            return python
        started = time.monotonic()
        for argv in (
            [sys.executable, "-m", "venv", str(VENV)],
            [str(python), "-m", "pip", "install", "--quiet", SDK_REQUIREMENT],
        ):
            done = subprocess.run(
                argv, cwd="/", env=clean_env(), capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, (
                f"{argv} exited with {done.returncode}:\n{done.stdout[-2000:]}\n"
                f"{done.stderr[-4000:]}"
            )
        assert has_sdk(python), f"{SDK_REQUIREMENT} installed but `{SDK_PROBE}` fails"
        print(f"created {VENV} in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return python
