"""A message's wire form: the operation IDs it carries, and their trace contexts.

The body is the operation IDs, one per line (ASCII; an ID never holds a line break), so a
message of one operation is that ID alone, as every message was before messages carried
several. While tracing is on, each operation's W3C trace context travels in the header
``x-traceparents`` (a list, in the body's order; an empty string for none), and the first
one also as ``traceparent``, where tools that know one context per message look for it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from service.usecases.ports import Unpublished

TRACEPARENTS_HEADER = "x-traceparents"


def encode_body(operation_ids: Sequence[str]) -> bytes:
    if not operation_ids:
        raise ValueError("a message carries at least one operation")
    return "\n".join(operation_ids).encode()


def trace_headers(traceparents: Sequence[str | None]) -> dict[str, object] | None:
    """The headers that carry the operations' trace contexts (``None``: none has one)."""
    if not any(traceparents):
        return None
    listed = [context or "" for context in traceparents]
    headers: dict[str, object] = {TRACEPARENTS_HEADER: listed}
    if listed[0]:
        headers["traceparent"] = listed[0]
    return headers


def _text(value: object) -> str | None:
    """A header's text (AMQP may hand a string over as bytes); ``None`` if there is none."""
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return value if isinstance(value, str) and value else None


def decode(body: bytes, headers: Mapping[str, object]) -> tuple[Unpublished, ...]:
    """The operations a received message carries, each with its trace context if it came
    with one. Blank lines are skipped: what is left is handed to the workers as it is (an ID
    that names no operation is found to be unknown there)."""
    operation_ids = [line.strip() for line in body.decode(errors="replace").split("\n")]
    operation_ids = [operation_id for operation_id in operation_ids if operation_id]
    listed = headers.get(TRACEPARENTS_HEADER)
    contexts: list[str | None]
    if isinstance(listed, list | tuple) and len(listed) == len(operation_ids):
        contexts = [_text(context) for context in listed]
    elif len(operation_ids) == 1:
        contexts = [_text(headers.get("traceparent"))]
    else:
        contexts = [None] * len(operation_ids)
    return tuple(
        Unpublished(operation_id, context)
        for operation_id, context in zip(operation_ids, contexts, strict=True)
    )
