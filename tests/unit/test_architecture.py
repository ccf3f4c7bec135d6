"""The layout's rules, read from the source: dependencies point inward, the domain is pure,
nothing imports in a circle, the worker entry point stays clear of the API, modules stay small.

See docs/architecture.md for the layers these tests hold the code to.
"""

from __future__ import annotations

import ast
import os
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "workers")
MAX_MODULE_LINES = 400
# The length limit holds for every module of the repository but the tests and the generated code.
NOT_HELD_TO_THE_LIMIT = ("tests", "gen")
SKIPPED_FOLDERS = ("__pycache__", "build", "dist")

# Inner layers first. A module may import its own layer and the layers before it, never a
# layer after it (bootstrap is the composition root; entry points sit outside it).
LAYERS = (
    "service.domain",
    "service.runtime",
    "service.usecases",
    "service.adapters",
    "service.bootstrap",
    "service.entrypoints",
)
# The API side: what the worker process must never load.
API_SIDE = (
    "service.entrypoints.api",
    "service.entrypoints.api_processes",
    "service.entrypoints.client",
    "service.entrypoints.grpc",
    "service.entrypoints.http",
    "grpc",
    "grpc_health",
    "grpc_reflection",
    "grpc_status",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def _under_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(module: str, path: Path, *, at_import_time: bool = False) -> set[str]:
    """Every module ``module`` imports (absolute names); with ``at_import_time``, only
    those imported when it is loaded (not inside functions or TYPE_CHECKING blocks)."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if at_import_time and (
            _under_type_checking(node, parents) or _inside_function(node, parents)
        ):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level or None]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _inside_function(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return True
    return False


def _layer(module: str) -> int | None:
    for index, layer in enumerate(LAYERS):
        if module == layer or module.startswith(layer + "."):
            return index
    return None


def _first_party(imported: set[str], modules: dict[str, Path]) -> set[str]:
    return {name for name in imported if name in modules}


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_an_outer_layer(module: str) -> None:
    own = _layer(module)
    if own is None:
        return
    outward = sorted(
        name
        for name in _first_party(_imports(module, MODULES[module]), MODULES)
        if (layer := _layer(name)) is not None and layer > own
    )
    assert outward == [], f"{module} ({LAYERS[own]}) imports outer layers: {outward}"


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("service.domain")))
def test_the_domain_imports_only_the_standard_library_and_itself(module: str) -> None:
    foreign = sorted(
        name
        for name in _imports(module, MODULES[module])
        if name.split(".")[0] not in sys.stdlib_module_names
        and not name.startswith("service.domain")
        and name != "__future__"
    )
    assert foreign == [], f"{module} imports {foreign}"


def test_no_modules_import_each_other_in_a_circle() -> None:
    graph = {
        module: _first_party(_imports(module, path, at_import_time=True), MODULES) - {module}
        for module, path in MODULES.items()
    }
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        pytest.fail(f"import cycle: {' -> '.join(exc.args[1])}")


def test_the_worker_process_loads_nothing_of_the_api_side() -> None:
    """Follow what ``python -m workers`` imports at load time, transitively."""
    seen: set[str] = set()
    todo = ["workers.__main__"]
    while todo:
        module = todo.pop()
        if module in seen or module not in MODULES:
            continue
        seen.add(module)
        todo.extend(_imports(module, MODULES[module], at_import_time=True))
    external = {
        name for module in seen for name in _imports(module, MODULES[module], at_import_time=True)
    }
    api = sorted(name for name in seen | external if name.startswith(API_SIDE))
    assert "service.entrypoints.worker" in seen
    assert api == [], f"the worker process loads {api}"


def _held_to_the_limit() -> list[Path]:
    """Every .py file of the repository outside the tests and the generated code (and outside
    hidden folders such as .venv and .git, and build output)."""
    found: list[Path] = []
    for folder, subfolders, files in os.walk(ROOT):
        here = Path(folder)
        subfolders[:] = [
            name
            for name in subfolders
            if not name.startswith(".")
            and name not in SKIPPED_FOLDERS
            and not name.endswith(".egg-info")
            and not (here == ROOT and name in NOT_HELD_TO_THE_LIMIT)
        ]
        found.extend(here / name for name in files if name.endswith(".py"))
    return sorted(found)


@pytest.mark.parametrize("path", _held_to_the_limit(), ids=lambda path: str(path.relative_to(ROOT)))
def test_no_module_is_longer_than_the_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"{path.relative_to(ROOT)} has {lines} lines; split it by concept"
    )


# The process modules (one per process, above the transports) and the command lines.
PROCESSES = (
    "service.entrypoints.api",
    "service.entrypoints.api_processes",
    "service.entrypoints.worker",
    "service.entrypoints.cli",
    "service.entrypoints.client",
)
# What the command-line client of the public API may import: like any SDK, the generated
# stubs and gRPC, and the command line's output helpers; never the server's code.
CLIENT_MAY_IMPORT = (
    "service.entrypoints.client",
    "service.entrypoints.cli.output",
    "yandex.",
    "google.",
    "grpc",
    "click",
    "rich",
)
# Module names found in several layers: one concept seen from each layer, not two meanings.
SAME_CONCEPT_IN_SEVERAL_LAYERS = {
    "__init__",
    "__main__",  # python -m service, python -m workers
    "accounts",  # service accounts: the rules, the exchange, the statements, the commands
    "auth",  # tokens and principals: the rule, the use case
    "endpoints",  # endpoint discovery: what is announced, the servicer
    "health",  # the API's health: what it reports, the command that asks it
    "ops",  # the operator's checks and queries: use case, queries, commands
    "outbox",  # the operations table as the outbox: use case, statements
    "schema",  # is every migration applied: use case, the database's record
    "tokens",  # API tokens: the statements, the operator's commands
}


def _in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize(
    "module",
    sorted(
        m
        for m in MODULES
        if _in_package(m, "service.entrypoints.grpc") or _in_package(m, "service.entrypoints.http")
    ),
)
def test_transports_import_no_process_module(module: str) -> None:
    """grpc/ and http/ hold only their transport: no process is assembled inside them, and
    gRPC knows nothing of HTTP (REST is gRPC transcoded, so http/ builds on grpc/'s frame)."""
    imported = _first_party(_imports(module, MODULES[module]), MODULES)
    wrong = sorted(
        name
        for name in imported
        if any(_in_package(name, process) for process in PROCESSES)
        or (
            _in_package(module, "service.entrypoints.grpc")
            and _in_package(name, "service.entrypoints.http")
        )
    )
    assert wrong == [], f"{module} imports {wrong}"


@pytest.mark.parametrize(
    "module", sorted(m for m in MODULES if _in_package(m, "service.entrypoints.client"))
)
def test_the_command_line_client_imports_only_the_public_api(module: str) -> None:
    foreign = sorted(
        name
        for name in _imports(module, MODULES[module])
        if name.split(".")[0] not in sys.stdlib_module_names
        and name != "__future__"
        and not any(
            name == allowed.rstrip(".") or name.startswith(allowed) for allowed in CLIENT_MAY_IMPORT
        )
    )
    assert foreign == [], f"{module} imports {foreign}"


def _classes(path: Path) -> list[str]:
    return [
        node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)
    ]


def test_no_two_classes_in_the_service_share_a_name() -> None:
    where: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        for name in _classes(path):
            where.setdefault(name, []).append(module)
    shared = {name: modules for name, modules in where.items() if len(modules) > 1}
    assert shared == {}, f"classes defined twice: {shared}"


def test_a_module_name_in_several_places_is_one_concept() -> None:
    """A new module named like another elsewhere must mean the same thing (and be listed in
    SAME_CONCEPT_IN_SEVERAL_LAYERS); otherwise give it a name of its own."""
    names: dict[str, list[str]] = {}
    for module, path in MODULES.items():
        names.setdefault(path.stem, []).append(module)
    repeated = {name for name, modules in names.items() if len(modules) > 1}
    assert repeated <= SAME_CONCEPT_IN_SEVERAL_LAYERS, sorted(
        repeated - SAME_CONCEPT_IN_SEVERAL_LAYERS
    )
