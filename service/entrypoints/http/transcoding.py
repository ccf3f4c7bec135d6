"""REST/JSON transcoding, driven by the ``google.api.http`` rules of the protos.

A rule (``google.api.HttpRule``) names the HTTP method and path template that call a gRPC
method, which request fields the path binds (``{image_id}``), and where the body goes (``*``:
the whole request; a field name: that field; none: no body). Fields bound by neither are query
parameters. This module reads the rules from the method descriptors (``bindings``), finds the
rule an HTTP request matches (``paths.Routes``), decodes the request into the method's request
message and encodes the answer, both in protobuf's canonical JSON mapping (``json_format``:
lowerCamelCase names, ``updateMask`` as ``"a,b"``, RFC 3339 times, ``Any`` with ``@type``,
int64 as strings).

What cannot be decoded is ``InvalidArgument`` naming the field (its proto name, as the
validation rules name fields) or, for what is wrong with the body as a whole, ``body``.
Nothing here knows aiohttp: the server hands in the pieces of a request (``HttpInput``).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from google.api import annotations_pb2, http_pb2
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from service.domain.errors import FieldViolation, InvalidArgument
from service.entrypoints.grpc.convert import EncodedOperation
from service.entrypoints.http.paths import PathTemplate

_HTTP_RULE: Any = annotations_pb2.http

_PATTERNS = ("get", "put", "post", "delete", "patch")
# Unknown names are echoed in errors, cut to this length.
_MAX_ECHOED = 100
# Well-known types whose JSON form is a string, so a query parameter can carry them.
_STRING_MESSAGES = {
    "google.protobuf.FieldMask": "a comma-separated list of field paths",
    "google.protobuf.Duration": 'a duration in seconds such as "30s"',
    "google.protobuf.Timestamp": 'an RFC 3339 time such as "2026-01-02T03:04:05Z"',
}
_SCALARS = {
    FieldDescriptor.CPPTYPE_STRING: "a string",
    FieldDescriptor.CPPTYPE_BOOL: "true or false",
    FieldDescriptor.CPPTYPE_INT32: "an integer",
    FieldDescriptor.CPPTYPE_INT64: "an integer",
    FieldDescriptor.CPPTYPE_UINT32: "a non-negative integer",
    FieldDescriptor.CPPTYPE_UINT64: "a non-negative integer",
    FieldDescriptor.CPPTYPE_FLOAT: "a number",
    FieldDescriptor.CPPTYPE_DOUBLE: "a number",
}


def _descriptor(message: Message) -> Descriptor:
    return cast(Descriptor, message.DESCRIPTOR)


def shown_name(name: str) -> str:
    """An unknown name as errors show it: cut short; quotes for an empty one."""
    return name[:_MAX_ECHOED] or '""'


def json_field_path(descriptor: Descriptor, path: str) -> str:
    """``path`` (dot-separated field names, each with an optional ``[index]`` or ``["key"]``)
    with each field of ``descriptor``'s message, nested ones too, by its JSON name. A segment
    that names no field (an unknown key as written, ``body``) ends the renaming: it and what
    follows are kept as they are."""
    renamed: list[str] = []
    segments = path.split(".")
    message: Descriptor | None = descriptor
    for n, segment in enumerate(segments):
        name, bracket, rest = segment.partition("[")
        field = message.fields_by_name.get(name) if message is not None else None
        if field is None:
            renamed += segments[n:]
            break
        renamed.append(field.json_name + bracket + rest)
        message = field.message_type
    return ".".join(renamed)


def _bad(field: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, description)])


# --- requests and answers ---------------------------------------------------------------------


@dataclass(frozen=True)
class HttpInput:
    """What a call is decoded from: path values (by field path), query pairs, raw body."""

    path_values: Mapping[str, str]
    query: Sequence[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Binding:
    """One HTTP rule of one method: how its request is read and its answer written."""

    http_method: str
    template: PathTemplate
    method: str  # the full gRPC name, /package.Service/Method
    request_type: type[Message]
    response_type: type[Message]
    body: str
    response_body: str = ""

    @classmethod
    def from_rule(
        cls,
        method: str,
        rule: http_pb2.HttpRule,
        request_type: type[Message],
        response_type: type[Message],
    ) -> Binding:
        pattern = rule.WhichOneof("pattern")
        if pattern == "custom":
            http_method, path = rule.custom.kind.upper(), rule.custom.path
        elif pattern in _PATTERNS:
            http_method, path = pattern.upper(), getattr(rule, pattern)
        else:
            raise ValueError(f"{method}: an HTTP rule without a pattern")
        template = PathTemplate.parse(path)
        descriptor = cast(Descriptor, request_type.DESCRIPTOR)
        for field_path in template.variables:
            if _resolve(descriptor, field_path) is None:
                raise ValueError(f"{method}: {path} binds unknown field {field_path}")
        if rule.body not in ("", "*") and rule.body not in descriptor.fields_by_name:
            raise ValueError(f"{method}: body {rule.body} is not a field")
        return cls(
            http_method, template, method, request_type, response_type, rule.body,
            rule.response_body,
        )  # fmt: skip

    def json_field_path(self, path: str) -> str:
        """A field path of the request as its JSON names it (``page_size`` -> ``pageSize``)."""
        return json_field_path(cast(Descriptor, self.request_type.DESCRIPTOR), path)

    def decode(self, given: HttpInput) -> Message:
        """The request message: the body, then the query, then the path (which wins)."""
        message = self.request_type()
        if self.body == "*":
            _merge(message, _json_object(given.body), {})
        elif self.body:
            field = self.request_type.DESCRIPTOR.fields_by_name[self.body]
            _merge(message, {field.json_name: _json_value(given.body)}, {})
        elif given.body.strip():
            raise _bad("body", "must be empty: this method reads the path and the query")
        if self.body != "*":
            _merge_query(message, given.query, given.path_values)
        elif given.query:
            raise _bad(
                shown_name(given.query[0][0]), "unknown query parameter: send it in the body"
            )
        for field_path, value in given.path_values.items():
            _set_path_value(message, field_path, value)
        return message

    def encode(self, response: Message | EncodedOperation) -> bytes:
        """The answer as canonical JSON (an already encoded operation is decoded first)."""
        if isinstance(response, EncodedOperation):
            response = self.response_type.FromString(response.wire)
        data: Any = json_format.MessageToDict(response)
        if self.response_body:
            field = self.response_type.DESCRIPTOR.fields_by_name[self.response_body]
            data = data.get(field.json_name)
        return dump_json(data)


def dump_json(data: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def bindings(service: ServiceDescriptor) -> list[Binding]:
    """A binding for every HTTP rule (and additional binding) of the service's methods."""
    found = []
    for method in service.methods:
        rule = cast(http_pb2.HttpRule, method.GetOptions().Extensions[_HTTP_RULE])
        if rule.WhichOneof("pattern") is None:
            continue
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        name = f"/{service.full_name}/{method.name}"
        for each in (rule, *rule.additional_bindings):
            found.append(Binding.from_rule(name, each, request_type, response_type))
    return found


# --- decoding ----------------------------------------------------------------------------------


def _json_value(body: bytes) -> Any:
    if not body.strip():
        return None
    try:
        return json.loads(body)
    except RecursionError:
        raise _bad("body", "is nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise _bad(
            "body", f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except ValueError:  # not UTF-8, a number too long to convert
        raise _bad("body", "is not valid JSON") from None


def _json_object(body: bytes) -> dict[str, Any]:
    value = _json_value(body)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad("body", "must be a JSON object")
    return value


@functools.cache
def _fields_by_key(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by JSON name and by proto name (canonical JSON accepts both)."""
    return {f.json_name: f for f in descriptor.fields} | dict(descriptor.fields_by_name)


def _resolve(descriptor: Descriptor, field_path: str) -> list[FieldDescriptor] | None:
    """The fields along a dotted path of JSON or proto names, or ``None``."""
    fields: list[FieldDescriptor] = []
    current: Descriptor | None = descriptor
    for name in field_path.split("."):
        field = _fields_by_key(current).get(name) if current is not None else None
        if field is None:
            return None
        fields.append(field)
        current = field.message_type
    return fields


def _expected(field: FieldDescriptor) -> str:
    """What a field takes, for the description of a value it could not take."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value = message.fields_by_name["value"]
        return f"invalid value: expected an object with {_kind(value)} as each value"
    kind = _kind(field)
    return (
        f"invalid value: expected a list, each {kind}"
        if field.is_repeated
        else f"invalid value: expected {kind}"
    )


def _kind(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return _STRING_MESSAGES.get(field.message_type.full_name, "an object")
    if field.enum_type is not None:
        return "one of " + ", ".join(v.name for v in field.enum_type.values)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return "base64 bytes"
    return _SCALARS[field.cpp_type]


def _merge(message: Message, values: dict[str, Any], paths: Mapping[str, str]) -> None:
    """Merge canonical JSON ``values`` into ``message``; on failure, name every culprit
    (``paths``: the field path a key stands for, when not the key's own field)."""
    descriptor = _descriptor(message)
    by_key = _fields_by_key(descriptor)
    # json_format takes a field given by both its names (the last wins): refused here.
    if len(values) == len({getattr(by_key.get(key), "name", key) for key in values}):
        try:
            json_format.ParseDict(values, message)
            return
        except Exception:  # ParseError, or whatever a setter raises for odd input
            pass
    raise InvalidArgument(_culprits(message, values, paths))


def _culprits(
    message: Message, values: dict[str, Any], paths: Mapping[str, str]
) -> list[FieldViolation]:
    """Each key of ``values`` that cannot be merged alone, and why."""
    descriptor = _descriptor(message)
    violations, seen = [], set()
    for key, value in values.items():
        field = _fields_by_key(descriptor).get(key)
        if field is None:
            violations.append(FieldViolation(shown_name(key), "unknown field"))
            continue
        name = paths.get(key, field.name)
        if field.name in seen:
            violations.append(FieldViolation(name, "is given more than once"))
            continue
        seen.add(field.name)
        try:
            json_format.ParseDict({key: value}, type(message)())
        except Exception:
            violations.append(FieldViolation(name, _expected_at(descriptor, name)))
    return violations or [FieldViolation("body", "is not a valid request")]


def _expected_at(descriptor: Descriptor, field_path: str) -> str:
    fields = _resolve(descriptor, field_path)
    return _expected(fields[-1]) if fields else "invalid value"


def _merge_query(
    message: Message, query: Sequence[tuple[str, str]], path_values: Mapping[str, str]
) -> None:
    """Query parameters: ``key=value`` per field (JSON or proto names, dotted for nested
    fields), repeated for a list."""
    grouped: dict[str, list[str]] = {}
    for key, value in query:
        grouped.setdefault(key, []).append(value)
    descriptor = _descriptor(message)
    violations: list[FieldViolation] = []
    tree: dict[str, Any] = {}
    top_paths: dict[str, str] = {}
    for key, values in grouped.items():
        fields = _resolve(descriptor, key)
        if fields is None:
            violations.append(FieldViolation(shown_name(key), "unknown query parameter"))
            continue
        path = ".".join(f.name for f in fields)
        leaf = fields[-1]
        problem = _query_problem(leaf, path in path_values, len(values))
        if problem:
            violations.append(FieldViolation(path, problem))
            continue
        try:
            converted = [_query_value(leaf, value) for value in values]
        except ValueError:
            violations.append(FieldViolation(path, _expected(leaf)))
            continue
        node = tree
        for field in fields[:-1]:
            node = node.setdefault(field.json_name, {})
            if not isinstance(node, dict):
                break
        else:
            node[leaf.json_name] = converted if leaf.is_repeated else converted[0]
            top_paths.setdefault(fields[0].json_name, path)
    if violations:
        raise InvalidArgument(violations)
    if tree:
        _merge(message, tree, top_paths)


def _query_problem(leaf: FieldDescriptor, bound_by_path: bool, count: int) -> str:
    if bound_by_path:
        return "is given by the path"
    message = leaf.message_type
    if message is not None and message.full_name not in _STRING_MESSAGES:
        return "cannot be given as a query parameter"
    if count > 1 and not leaf.is_repeated:
        return "is given more than once"
    return ""


def _query_value(field: FieldDescriptor, text: str) -> Any:
    """A query parameter's text as the JSON value of the field (``ValueError`` if it has none)."""
    if field.cpp_type == FieldDescriptor.CPPTYPE_BOOL:
        if text in ("true", "false"):
            return text == "true"
        raise ValueError(text)
    # Numbers, enums and string-valued well-known types all accept their JSON string form.
    return text


def _set_path_value(message: Message, field_path: str, value: str) -> None:
    field = _descriptor(message).fields_by_name.get(field_path)
    if field is not None and field.cpp_type == FieldDescriptor.CPPTYPE_STRING:
        setattr(message, field_path, value)  # the common case, without the JSON parser
        return
    fields = _resolve(_descriptor(message), field_path)
    assert fields is not None  # checked when the binding was made
    tree: dict[str, Any] = {fields[-1].json_name: value}
    for parent in reversed(fields[:-1]):
        tree = {parent.json_name: tree}
    _merge(message, tree, {fields[0].json_name: field_path})
