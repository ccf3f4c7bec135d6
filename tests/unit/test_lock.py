"""requirements.lock, which the Docker image installs with ``pip --require-hashes``, agrees
with pyproject.toml: every runtime dependency pinned to one exact version that its range
admits, every pin with the hashes of its files. After a change of [project] dependencies,
``scripts/lock`` writes it again."""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support import ROOT

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^ ;\\]+)")


def locked() -> dict[str, tuple[str, int]]:
    """Each pinned package's version and how many hashes it has."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if match := PIN.match(line):
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{current} pinned twice"
            pins[current] = (match.group(2), 0)
        elif line.strip().startswith("--hash=sha256:") and current is not None:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
    return pins


def test_every_runtime_dependency_is_pinned_to_a_version_its_range_admits():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = locked()
    for spec in project["dependencies"]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run scripts/lock"
        version = pins[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {name}=={version}, outside {requirement.specifier}:"
            " run scripts/lock"
        )


def test_every_pin_carries_the_hashes_of_its_files():
    pins = locked()
    assert len(pins) > 20
    assert not [name for name, (_, hashes) in pins.items() if hashes == 0]


def test_the_image_installs_the_lock_with_hashes_and_the_project_without_its_own_resolve():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "--require-hashes -r requirements.lock" in dockerfile
    assert "pip install --no-cache-dir --no-deps --no-build-isolation ." in dockerfile
