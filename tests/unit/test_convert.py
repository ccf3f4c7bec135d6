"""Timestamps sent on the wire: the same seconds and nanos protobuf's own ``FromDatetime``
makes, for any moment the database can store (naive values are UTC)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from service.entrypoints.grpc.convert import timestamp


def reference(value: datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value)
    return ts


zones = st.one_of(
    st.none(),
    st.just(UTC),
    st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m))),
)


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)), zones)
def test_a_timestamp_is_what_from_datetime_makes(value: datetime, zone: timezone | None) -> None:
    moment = value.replace(tzinfo=zone)
    assert timestamp(moment) == reference(moment)


def test_before_the_epoch_the_nanos_stay_positive() -> None:
    moment = datetime(1969, 12, 31, 23, 59, 59, 250000, tzinfo=UTC)
    assert timestamp(moment) == timestamp_pb2.Timestamp(seconds=-1, nanos=250_000_000)
