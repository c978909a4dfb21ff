"""Every gRPC status maps to Envoy's HTTP status, with the google.rpc.Status as JSON;
Envoy's own errors are JSON too; REST clients see no gRPC headers, gRPC clients through
the edge keep status and details."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from gateway.descriptors import build_pool, load_descriptor_set, message_class
from tests.edge.conftest import EdgeUser

CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
ENVOY_TABLE = {"CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
               "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
               "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
               "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}


@pytest.mark.parametrize("code", CODES, ids=[code.name for code in CODES])
async def test_each_code_with_its_status_body(http: aiohttp.ClientSession, edge_url: str,
                                              code: grpc.StatusCode) -> None:
    number = code.value[0]
    async with http.post(f"{edge_url}/v1/fail", json={"code": number, "message": "nö 100%",
                                                      "withDetails": True}) as response:
        assert response.status == ENVOY_TABLE[code.name]
        assert response.content_type == "application/json"
        body = await response.json()
    assert body["code"] == number and body["message"] == "nö 100%"
    assert [d["@type"] for d in body["details"]] == [
        "type.googleapis.com/google.rpc.ErrorInfo", "type.googleapis.com/google.rpc.BadRequest"]
    assert body["details"][0]["reason"] == "TEST_FAILURE"
    assert body["details"][1]["fieldViolations"] == [{"field": "code",
                                                      "description": "asked to fail"}]


async def test_a_status_without_details_is_built_from_code_and_message(
        http: aiohttp.ClientSession, edge_url: str) -> None:
    async with http.post(f"{edge_url}/v1/fail",
                         json={"code": 9, "message": "not yet"}) as response:
        assert response.status == 400
        assert await response.json() == {"code": 9, "message": "not yet"}


async def test_a_real_service_error_keeps_its_details(http: aiohttp.ClientSession,
                                                      edge_url: str) -> None:
    async with http.post(f"{edge_url}/v1/auth:login",
                         json={"username": "nobody-here", "password": "wrong password"}
                         ) as response:
        assert response.status == 401
        body = await response.json()
    assert body["code"] == 16
    assert body["details"][0]["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
    assert body["details"][0]["domain"] == "llmmesh"


async def test_rest_responses_carry_no_grpc_headers(http: aiohttp.ClientSession,
                                                    edge_url: str) -> None:
    for body in ({"code": 0}, {"code": 5, "message": "gone", "withDetails": True}):
        async with http.post(f"{edge_url}/v1/fail", json=body) as response:
            await response.read()
            leaked = [name for name in response.headers if name.lower().startswith("grpc-")]
            assert not leaked, f"{response.status}: {leaked}"


async def test_envoys_own_errors_on_transcoded_routes_are_json(
        http: aiohttp.ClientSession, edge_url: str, shared_user: EdgeUser) -> None:
    """The chat upstream is not running in this suite: Envoy answers for it."""
    async with http.get(f"{edge_url}/v1/conversations", headers=shared_user.bearer) as r:
        assert r.status == 503
        assert r.content_type == "application/json"
        body = await r.json()
    assert body["code"] == 14 and body["message"]


async def test_grpc_clients_through_the_edge_keep_status_and_details(
        edge_url: str, edge_descriptor_set: Path, shared_user: EdgeUser) -> None:
    pool = build_pool(load_descriptor_set(edge_descriptor_set))
    fail = message_class(pool, "edgetest.v1.FailRequest")
    echo = message_class(pool, "edgetest.v1.Echo")
    async with grpc.aio.insecure_channel(edge_url.removeprefix("http://")) as channel:
        call = channel.unary_unary("/edgetest.v1.EdgeTestService/Fail",
                                   request_serializer=lambda m: m.SerializeToString(),
                                   response_deserializer=echo.FromString)
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await call(fail(code=9, message="not yet", with_details=True))
        assert failed.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        status = rpc_status.from_call(failed.value)  # type: ignore[arg-type]
        assert status is not None and status.message == "not yet"
        info = error_details_pb2.ErrorInfo()
        assert status.details[0].Unpack(info) and info.reason == "TEST_FAILURE"
        chat = chat_pb2_grpc.ChatServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as down:
            await chat.ListConversations(chat_pb2.ListConversationsRequest(),
                                         metadata=(("authorization", shared_user.bearer[
                                             "authorization"]),))
        assert down.value.code() is grpc.StatusCode.UNAVAILABLE
