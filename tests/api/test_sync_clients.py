"""The generated package serves sync users too: pytest-grpc hosts a sync fake of
AuthService built on the generated servicer base, and the generated sync stub
talks to it. (Our own services are grpc.aio and are tested over real aio servers;
pytest-grpc only drives sync `grpc.server`.)"""

from __future__ import annotations

import json

import grpc
import pytest
from google.api import httpbody_pb2
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from mesh.redis_server import free_port


class FakeAuth(auth_pb2_grpc.AuthServiceServicer):
    """What a user of our API might write to test their own client code."""

    def GetJwks(self, request, context):  # type: ignore[no-untyped-def]
        return httpbody_pb2.HttpBody(content_type="application/json",
                                     data=json.dumps({"keys": []}).encode())

    def Login(self, request, context):  # type: ignore[no-untyped-def]
        if request.password != "open sesame":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "invalid username or password")
        return auth_pb2.LoginResponse(tokens=auth_pb2.TokenPair(access_token="t",
                                                                token_type="Bearer"))


@pytest.fixture(scope="module")
def grpc_addr() -> str:
    return f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def grpc_add_to_server():  # type: ignore[no-untyped-def]
    return auth_pb2_grpc.add_AuthServiceServicer_to_server


@pytest.fixture(scope="module")
def grpc_servicer() -> FakeAuth:
    return FakeAuth()


@pytest.fixture(scope="module")
def grpc_stub_cls(grpc_channel):  # type: ignore[no-untyped-def]
    return auth_pb2_grpc.AuthServiceStub


def test_sync_stub_round_trips_http_body(grpc_stub) -> None:  # type: ignore[no-untyped-def]
    body = grpc_stub.GetJwks(auth_pb2.GetJwksRequest())
    assert body.content_type == "application/json"
    assert json.loads(body.data) == {"keys": []}


def test_sync_stub_sees_status_codes(grpc_stub) -> None:  # type: ignore[no-untyped-def]
    assert grpc_stub.Login(auth_pb2.LoginRequest(username="a", password="open sesame")
                           ).tokens.token_type == "Bearer"
    with pytest.raises(grpc.RpcError) as caught:
        grpc_stub.Login(auth_pb2.LoginRequest(username="a", password="wrong"))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
