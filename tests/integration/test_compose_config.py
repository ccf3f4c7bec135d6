"""docker-compose itself accepts the compose file (it runs a process, so not a unit test;
.ci/run checks the same with ``docker-compose config``)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import ROOT


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_accepts_the_file():
    subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
