"""Epoch seconds and milliseconds as protobuf Timestamps."""

from __future__ import annotations

import pytest

from services.runtime.timestamps import timestamp_from_millis, timestamp_from_seconds


@pytest.mark.parametrize(("seconds", "expected"), [
    (1_700_000_000.25, (1_700_000_000, 250_000_000)),
    (0, (0, 0)),
    (12.0, (12, 0)),
    (-1.5, (-2, 500_000_000)),  # before the epoch: nanos still count forward
    (1.9999999999, (2, 0)),  # a fraction that rounds up carries into the seconds
])
def test_seconds(seconds: float, expected: tuple[int, int]) -> None:
    stamp = timestamp_from_seconds(seconds)
    assert (stamp.seconds, stamp.nanos) == expected


def test_sub_microsecond_precision_survives_for_current_times() -> None:
    stamp = timestamp_from_seconds(1_700_000_000.123456)
    assert stamp.seconds == 1_700_000_000
    assert abs(stamp.nanos - 123_456_000) < 1_000


def test_milliseconds() -> None:
    stamp = timestamp_from_millis(1_700_000_000_123)
    assert (stamp.seconds, stamp.nanos) == (1_700_000_000, 123_000_000)
