"""The status code a call that aborted ended with, whatever ServicerContext.code() gives."""

from __future__ import annotations

import grpc
import pytest

from services.runtime.interceptor import _status_code


@pytest.mark.parametrize(("reported", "expected"), [
    (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
    (5, grpc.StatusCode.NOT_FOUND),  # older grpcio: the number
    (None, grpc.StatusCode.UNKNOWN),  # no code set yet
    ("odd", grpc.StatusCode.UNKNOWN),
])
def test_status_code(reported: object, expected: grpc.StatusCode) -> None:
    assert _status_code(reported) is expected
