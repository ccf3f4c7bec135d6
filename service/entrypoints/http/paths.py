"""Path templates of ``google.api.http`` rules, and the routes they make.

A template is literals, ``*`` (one segment), ``**`` (the rest), variables (``{image_id}``,
``{name=shelves/*}``) binding request fields, and an optional final ``:verb``. It is matched
against the raw, percent-encoded path, so an encoded ``/`` stays inside its segment; the
values of the variables come out decoded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import unquote

T = TypeVar("T")
_FIELD_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")

# --- path templates ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PathTemplate:
    """A compiled path template: literals, ``*``, ``**``, ``{field}``, ``{field=a/*}`` and a
    final ``:verb``. Matched against the raw (percent-encoded) path; values come decoded."""

    text: str
    pattern: re.Pattern[str]
    variables: tuple[str, ...]
    verb: str

    @classmethod
    def parse(cls, text: str) -> PathTemplate:
        if not text.startswith("/"):
            raise ValueError(f"path template {text!r} must start with /")
        depth, verb_at = 0, -1
        for index, char in enumerate(text):
            depth += {"{": 1, "}": -1}.get(char, 0)
            if char == ":" and depth == 0:
                verb_at = index
        path, verb = (text[:verb_at], text[verb_at + 1 :]) if verb_at >= 0 else (text, "")
        variables: list[str] = []
        regex: list[str] = []
        for segment in _split_segments(path[1:]):
            if segment.startswith("{"):
                field, _, inner = segment[1:-1].partition("=")
                if not _FIELD_PATH.fullmatch(field):
                    raise ValueError(f"bad variable {segment!r} in {text!r}")
                group = _segments_regex(_split_segments(inner) if inner else ["*"])
                regex.append(f"(?P<v{len(variables)}>{group})")
                variables.append(field)
            else:
                regex.append(_segments_regex([segment]))
        suffix = ":" + re.escape(verb) if verb else ""
        return cls(text, re.compile("/" + "/".join(regex) + suffix), tuple(variables), verb)

    def match(self, raw_path: str) -> dict[str, str] | None:
        """The decoded value of each variable (by field path), or ``None`` if no match."""
        found = self.pattern.fullmatch(raw_path)
        if found is None:
            return None
        return {field: unquote(found.group(f"v{i}")) for i, field in enumerate(self.variables)}


def _split_segments(path: str) -> list[str]:
    """Split on ``/`` outside braces."""
    segments, depth, start = [], 0, 0
    for index, char in enumerate(path):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if char == "/" and depth == 0:
            segments.append(path[start:index])
            start = index + 1
    segments.append(path[start:])
    if any(not segment for segment in segments):
        raise ValueError(f"empty segment in {path!r}")
    return segments


def _segments_regex(segments: Sequence[str]) -> str:
    parts = []
    for segment in segments:
        if segment == "*":
            parts.append("[^/]+")
        elif segment == "**":
            parts.append(".+")
        elif "{" in segment or "}" in segment or "*" in segment:
            raise ValueError(f"bad segment {segment!r}")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


# --- routes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match(Generic[T]):
    target: T
    path_values: dict[str, str]


class Routes(Generic[T]):
    """Targets by HTTP method and path template. A template with a verb is tried before one
    without, so ``GET /operations/x:wait`` is the wait, not a Get of ``x:wait``."""

    def __init__(self, entries: Iterable[tuple[str, PathTemplate, T]]) -> None:
        self._entries = sorted(entries, key=lambda entry: not entry[1].verb)

    def find(self, http_method: str, raw_path: str) -> Match[T] | set[str]:
        """The target and path values; else the methods the path allows (empty: none)."""
        allowed: set[str] = set()
        for method, template, target in self._entries:
            values = template.match(raw_path)
            if values is None:
                continue
            if method == http_method:
                return Match(target, values)
            allowed.add(method)
        return allowed
