"""Regenerate the Python code for the protos under ``protos/`` into ``gen/``.

Usage: ``python tools/gen_protos.py`` to write, ``python tools/gen_protos.py --check`` to
fail (exit 1) when the committed code differs from what the protos produce.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import shutil
import sys
import tempfile
from pathlib import Path

import grpc_tools
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
GEN = ROOT / "gen"


def _googleapis_include() -> Path:
    import google.rpc

    # googleapis-common-protos ships its .proto files next to the generated modules.
    return Path(next(iter(google.rpc.__path__))).parent.parent


def generate(out: Path) -> None:
    """Run protoc with the Python, gRPC and mypy plugins over every proto file."""
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    bindir = Path(sys.executable).parent
    args = [
        "protoc",
        f"-I{PROTOS}",
        f"-I{Path(next(iter(grpc_tools.__path__))) / '_proto'}",
        f"-I{_googleapis_include()}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *files,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    for directory in [out / "yandex", *(p for p in (out / "yandex").rglob("*") if p.is_dir())]:
        (directory / "__init__.py").touch()
    (out / "yandex" / "py.typed").touch()


def _tree(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


def check() -> int:
    """Compare a fresh generation with the committed ``gen/`` tree."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        want, have = _tree(fresh), _tree(GEN)
        stale = sorted(set(want) ^ set(have))
        stale += sorted(
            name
            for name in set(want) & set(have)
            if not filecmp.cmp(want[name], have[name], shallow=False)
        )
    if stale:
        print("generated code is stale; run: python tools/gen_protos.py", file=sys.stderr)
        for name in stale:
            print(f"  {name}", file=sys.stderr)
        return 1
    print("generated code is up to date")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if gen/ is stale")
    if parser.parse_args().check:
        return check()
    if GEN.exists():
        shutil.rmtree(GEN)
    generate(GEN)
    print(f"wrote {GEN.relative_to(ROOT)}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    raise SystemExit(main())
