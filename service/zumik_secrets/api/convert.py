"""Conversions between protobuf well-known types and Python values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from zumik_secrets.core.errors import FieldViolation, InvalidArgument


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    """A Timestamp for ``value``, or None (leave the field unset)."""
    if value is None:
        return None
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def duration(value: timedelta | int | None) -> duration_pb2.Duration | None:
    """A Duration for ``value`` (a timedelta or whole seconds), or None."""
    if value is None:
        return None
    d = duration_pb2.Duration()
    if isinstance(value, int):
        d.seconds = value
    else:
        d.FromTimedelta(value)
    return d


def read_duration(
    message: duration_pb2.Duration, field: str, *, maximum: timedelta | None = None
) -> timedelta:
    """The timedelta of a request Duration field (zero when unset).

    Raises:
        InvalidArgument: reason ``INVALID_DURATION`` when negative, malformed or too long.
    """
    if (
        message.nanos < -999_999_999
        or message.nanos > 999_999_999
        or (message.seconds and message.nanos and (message.seconds > 0) != (message.nanos > 0))
    ):
        raise _bad_duration(field, "is not a valid duration")
    if message.seconds < 0 or message.nanos < 0:
        raise _bad_duration(field, "must not be negative")
    if message.seconds > 100 * 365 * 86400:
        raise _bad_duration(field, "is too long")
    value = timedelta(seconds=message.seconds, microseconds=message.nanos // 1000)
    if maximum is not None and value > maximum:
        raise _bad_duration(field, f"must be at most {int(maximum.total_seconds())}s")
    return value


def _bad_duration(field: str, problem: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field} {problem}",
        reason="INVALID_DURATION",
        metadata={"field": field},
        violations=[FieldViolation(field, problem)],
    )
