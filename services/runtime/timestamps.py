"""`google.protobuf.Timestamp` from the epoch times our stores keep."""

from __future__ import annotations

import math

from google.protobuf.timestamp_pb2 import Timestamp

_NANOS_PER_SECOND = 1_000_000_000


def timestamp_from_seconds(seconds: float) -> Timestamp:
    """A Timestamp for `seconds` since the epoch (a `time.time()` value).

    Whole seconds and the fraction are taken apart first: `seconds * 1e9` as one float
    would lose the last few hundred nanoseconds.
    """
    whole = math.floor(seconds)
    nanos = round((seconds - whole) * _NANOS_PER_SECOND)
    if nanos == _NANOS_PER_SECOND:  # the fraction rounded up to a whole second
        whole, nanos = whole + 1, 0
    return Timestamp(seconds=whole, nanos=nanos)


def timestamp_from_millis(millis: int) -> Timestamp:
    """A Timestamp for `millis` milliseconds since the epoch."""
    stamp = Timestamp()
    stamp.FromMilliseconds(millis)
    return stamp
