"""A message's wire form (``adapters/rabbitmq/messages``): the operation IDs it carries, one per
line, and their trace contexts; and a message of one operation as every message was before."""

from __future__ import annotations

import pytest

from service.adapters.rabbitmq.messages import (
    TRACEPARENTS_HEADER,
    decode,
    encode_body,
    trace_headers,
)
from service.usecases.ports import Unpublished

A = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
B = "00-1af7651916cd43dd8448eb211c80319c-c7ad6b7169203331-01"
IDS = ["opnaaaaaaaaaaaaaaaaa", "opnbbbbbbbbbbbbbbbbb", "opnccccccccccccccccc"]


def test_a_message_of_several_operations_reads_back_with_each_ones_trace():
    contexts = [A, None, B]
    headers = trace_headers(contexts)
    assert headers is not None

    received = decode(encode_body(IDS), headers)

    assert received == tuple(Unpublished(i, c) for i, c in zip(IDS, contexts, strict=True))


def test_without_tracing_a_message_has_no_headers_and_its_operations_no_trace():
    assert trace_headers([None, None]) is None
    assert decode(encode_body(IDS), {}) == tuple(Unpublished(i) for i in IDS)


def test_a_message_of_one_operation_is_its_id_alone_with_its_traceparent():
    headers = trace_headers([A])
    assert encode_body(IDS[:1]) == IDS[0].encode()
    assert headers is not None
    assert headers["traceparent"] == A


def test_a_message_from_before_batches_reads_as_one_operation_with_its_traceparent():
    assert decode(IDS[0].encode(), {"traceparent": A.encode()}) == (Unpublished(IDS[0], A),)


def test_trace_contexts_that_do_not_match_the_operations_are_ignored():
    headers = {TRACEPARENTS_HEADER: [A], "traceparent": A}
    assert decode(encode_body(IDS), headers) == tuple(Unpublished(i) for i in IDS)


def test_blank_lines_are_skipped():
    assert decode(b"\n" + encode_body(IDS[:2]) + b"\n\n", {}) == tuple(
        Unpublished(i) for i in IDS[:2]
    )


def test_a_message_carries_at_least_one_operation():
    with pytest.raises(ValueError, match="at least one"):
        encode_body([])
