"""Storage that cannot answer maps to UNAVAILABLE, and an outage logs one WARNING per
interval rather than one per call."""

from __future__ import annotations

import logging

import grpc
import pytest
from redis import exceptions as redis_errors

from services.runtime.storage_errors import (
    STORAGE_RETRY_SECONDS,
    STORAGE_UNAVAILABLE_REASON,
    OutageWarner,
    storage_unavailable,
)


@pytest.mark.parametrize("error", [
    redis_errors.ConnectionError("refused"), redis_errors.TimeoutError("slow"),
    redis_errors.BusyLoadingError("loading"), redis_errors.ReadOnlyError("replica"),
    redis_errors.MasterDownError("down"), redis_errors.TryAgainError("again"),
])
def test_storage_outages_are_unavailable(error: Exception) -> None:
    mapped = storage_unavailable(error)
    assert mapped is not None
    assert mapped.code == grpc.StatusCode.UNAVAILABLE
    assert mapped.reason == STORAGE_UNAVAILABLE_REASON
    assert mapped.retry_after_seconds == STORAGE_RETRY_SECONDS


@pytest.mark.parametrize("error", [redis_errors.ResponseError("WRONGTYPE"),
                                   redis_errors.DataError("bad"), ValueError("bug")])
def test_other_errors_are_not_outages(error: Exception) -> None:
    assert storage_unavailable(error) is None


def test_one_warning_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [100.0]
    warner = OutageWarner(logging.getLogger("llmmesh.test.outage"), interval=60.0,
                          clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="llmmesh.test.outage")
    for _ in range(50):
        warner.failed("/pkg.S/M", redis_errors.ConnectionError("refused"))
        now[0] += 1.0  # 50 calls over 50 s: one warning
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    now[0] = 161.0
    warner.failed("/pkg.S/M", redis_errors.ConnectionError("refused"))
    assert len(caplog.records) == 2
    assert "49 more failed calls" in caplog.records[1].getMessage()
