"""The settings a command's ``--help`` lists are the settings its code reads, found in the
source: from the command's function, follow every function it may call (by name, within the
modules the program may load) and collect each ``settings.<field>`` read on the way.

The following is by name, so it may reach more than is called, never less: a setting read
anywhere the command can get to is listed, and a listed setting is read somewhere it can get to.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import click
import pytest

from service.entrypoints.cli.helptext import SettingsCommand, SettingsGroup
from service.entrypoints.cli.service import cli
from service.entrypoints.cli.workers import workers
from service.runtime.settings import (
    READ_BY_API_ONLY,
    READ_BY_BOTH,
    READ_BY_WORKERS_ONLY,
    Settings,
)

ROOT = Path(__file__).resolve().parents[2]
FIELDS = frozenset(Settings.model_fields)
# The names a Settings object goes by where its fields are read.
SETTINGS_NAMES = frozenset({"settings", "_settings"})
INITS = ("__init__", "__post_init__")


@dataclass
class _Function:
    module: str
    reads: set[str] = field(default_factory=set)  # fields of Settings
    refers_to: set[str] = field(default_factory=set)  # names called or passed on


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(module: str, tree: ast.Module) -> tuple[set[str], dict[str, str]]:
    """The modules ``module`` imports anywhere (in functions too), and what its imported
    names stand for: ``module:`` for a module of ours, ``-`` for anything not ours (never
    followed), else the name of one of our functions or classes."""
    found: set[str] = set()
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
                ours = _is_module(alias.name)
                aliases[alias.asname or alias.name.split(".")[0]] = (
                    f"{alias.name}:" if ours else "-"
                )
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[: -node.level or None]
                base = ".".join([*package, base] if base else package)
            found.add(base)
            for alias in node.names:
                full = f"{base}.{alias.name}"
                found.add(full)
                meaning = f"{full}:" if _is_module(full) else alias.name
                aliases[alias.asname or alias.name] = meaning if _is_module(base) else "-"
    return found, aliases


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _function(module: str, node: ast.AST, aliases: dict[str, str]) -> _Function:
    """What a function (its nested functions included, its decorators not) reads and refers
    to; a class stands for its ``__init__`` and ``__post_init__``."""
    function = _Function(module)
    if isinstance(node, ast.ClassDef):
        function.refers_to |= {f"{module}:{node.name}.{init}" for init in INITS}
        return function
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    inside = [inner for part in (*node.body, node.args) for inner in ast.walk(part)]
    settings_names = set(SETTINGS_NAMES)
    for inner in inside:  # a local name for the settings: s = self._settings
        if (
            isinstance(inner, ast.Assign)
            and len(inner.targets) == 1
            and isinstance(target := inner.targets[0], ast.Name)
            and _name_of(inner.value) in SETTINGS_NAMES
        ):
            settings_names.add(target.id)
    for inner in inside:
        if isinstance(inner, ast.Attribute):
            owner = _name_of(inner.value)
            if inner.attr in FIELDS and owner in settings_names:
                function.reads.add(inner.attr)
            # logs.configure is that module's function, not any configure.
            meaning = aliases.get(owner, "") if isinstance(inner.value, ast.Name) else ""
            # super().__init__ and the like: a base class's, not every class's.
            if meaning != "-" and not inner.attr.startswith("__"):
                function.refers_to.add(
                    meaning + inner.attr if meaning.endswith(":") else inner.attr
                )
        elif isinstance(inner, ast.Name):
            meaning = aliases.get(inner.id, inner.id)
            if meaning != "-" and not meaning.endswith(":"):
                function.refers_to.add(meaning)
    return function


def _name_of(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    return node.attr if isinstance(node, ast.Attribute) else ""


@dataclass
class _Program:
    imports: dict[str, set[str]]
    functions: dict[str, list[_Function]]  # by name, every module's


@cache
def _program() -> _Program:
    imports: dict[str, set[str]] = {}
    functions: dict[str, list[_Function]] = {}
    for package in ("service", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            module = _module_name(path)
            tree = ast.parse(path.read_text())
            imports[module], aliases = _imported(module, tree)
            # Module-level functions and classes, and methods; a nested function is part of
            # the function it is in.
            # (A class's __init__ under Class.__init__ too, for the class to stand for.)
            for node in tree.body:
                inner = node.body if isinstance(node, ast.ClassDef) else []
                for one in (node, *inner):
                    if isinstance(one, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        found = _function(module, one, aliases)
                        functions.setdefault(one.name, []).append(found)
                        if one is not node and one.name in INITS:
                            functions.setdefault(f"{node.name}.{one.name}", []).append(found)
    return _Program(imports, functions)


def _loadable(program: _Program, module: str) -> set[str]:
    """``module`` and every first-party module it may load, at import time or later."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen or name not in program.imports:
            continue
        seen.add(name)
        todo.extend(program.imports[name])
    return seen


def settings_read_by(callback: object) -> set[str]:
    """The settings read by ``callback`` (a command's function) and whatever it may call."""
    program = _program()
    target = inspect.unwrap(callback)  # type: ignore[arg-type]
    module, name = target.__module__, target.__name__
    modules = _loadable(program, module)
    todo = [f for f in program.functions[name] if f.module == module]
    assert todo, f"{module}.{name} not found in the source"
    seen: set[int] = set()
    reads: set[str] = set()
    while todo:
        function = todo.pop()
        if id(function) in seen:
            continue
        seen.add(id(function))
        reads |= function.reads
        for called in function.refers_to:
            in_module, _, name = called.rpartition(":")
            todo.extend(
                f
                for f in program.functions.get(name, ())
                if f.module in modules and (not in_module or f.module == in_module)
            )
    return reads


def _commands(command: click.Command, path: str) -> Iterator[tuple[str, click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _commands(sub, f"{path} {name}")


def _listed(command: click.Command) -> set[str]:
    assert isinstance(command, SettingsCommand | SettingsGroup)
    return set(command.settings)


def _read(command: click.Command) -> set[str]:
    """A command's own reads; a group that does nothing itself reads what its commands do."""
    own = settings_read_by(command.callback) if command.callback else set()
    if isinstance(command, click.Group) and not command.invoke_without_command:
        for sub in command.commands.values():
            own |= _read(sub)
    return own


SETTINGS_COMMANDS = sorted(
    (path, command)
    for root, prog in ((cli, "python -m service"), (workers, "python -m workers"))
    for path, command in _commands(root, prog)
    if isinstance(command, SettingsCommand | SettingsGroup)
)


@pytest.mark.parametrize(
    "command", [command for _, command in SETTINGS_COMMANDS], ids=[p for p, _ in SETTINGS_COMMANDS]
)
def test_a_help_lists_exactly_the_settings_its_command_reads(command: click.Command) -> None:
    listed, read = _listed(command), _read(command)
    never_read = sorted(name.upper() for name in listed - read)
    unlisted = sorted(name.upper() for name in read - listed)
    assert (never_read, unlisted) == ([], []), (
        f"listed but never read: {never_read}; read but not listed: {unlisted}"
    )


def test_every_setting_is_declared_read_by_one_group_of_processes() -> None:
    groups = (READ_BY_BOTH, READ_BY_API_ONLY, READ_BY_WORKERS_ONLY)
    assert sorted(name for group in groups for name in group) == sorted(Settings.model_fields)


def test_the_workers_read_nothing_only_the_api_serves() -> None:
    worker = settings_read_by(workers.callback)
    assert not worker & {"grpc_listen", "http_listen", "http_max_concurrent_requests"}
    assert {"worker_concurrency", "database_url", "amqp_url"} <= worker


def test_the_api_reads_nothing_only_the_workers_do() -> None:
    api = settings_read_by(cli.callback)
    assert not api & {"worker_concurrency", "lease_seconds", "download_max_bytes"}
    assert {"grpc_listen", "http_listen", "database_url", "amqp_url"} <= api
