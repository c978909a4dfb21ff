"""A request body that is not protobuf answers INVALID_ARGUMENT (MALFORMED_REQUEST), never
UNKNOWN, and logs no ERROR: an anonymous client cannot flood the log with tracebacks. The
caller is authenticated first: without a token a user method answers UNAUTHENTICATED."""

from __future__ import annotations

import logging

import grpc
import pytest

from tests.helpers import LoggedIn, error_info, field_violations

GARBAGE = b"\xff" * 16  # wire type 7 does not exist: no message decodes from this
LOGIN = "/llmmesh.auth.v1.AuthService/Login"  # public
GET_USER = "/llmmesh.auth.v1.AuthService/GetUser"  # a user's token required


def _no_errors(caplog: pytest.LogCaptureFixture) -> None:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@pytest.mark.parametrize(("method", "with_token"), [(LOGIN, False), (LOGIN, True),
                                                    (GET_USER, True)])
async def test_garbage_is_invalid_argument(auth_channel, alice: LoggedIn, caplog,
                                           method: str, with_token: bool) -> None:
    caplog.set_level(logging.WARNING)
    call = auth_channel.unary_unary(method)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(GARBAGE, metadata=alice.metadata if with_token else None)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "MALFORMED_REQUEST"
    assert set(field_violations(caught.value)) == {"request"}
    _no_errors(caplog)


async def test_garbage_without_a_token_at_a_user_method_is_unauthenticated(
        auth_channel, caplog) -> None:
    caplog.set_level(logging.WARNING)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_channel.unary_unary(GET_USER)(GARBAGE)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    _no_errors(caplog)


async def test_invalid_utf8_in_a_string_field(auth_channel, caplog) -> None:
    caplog.set_level(logging.WARNING)
    body = b"\x0a\x02\xc3\x28"  # LoginRequest.username (field 1) = invalid UTF-8
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await auth_channel.unary_unary(LOGIN)(body)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _no_errors(caplog)
