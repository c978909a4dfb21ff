"""Every gRPC status maps to Envoy's HTTP status, with the google.rpc.Status as JSON."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from gateway.status import GRPC_TO_HTTP

CODES = [code for code in grpc.StatusCode if code is not grpc.StatusCode.OK]
ENVOY_TABLE = {"CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400,
               "DEADLINE_EXCEEDED": 504, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
               "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400,
               "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500,
               "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401}


def test_the_mapping_is_envoys() -> None:
    assert {code.name: status for code, status in GRPC_TO_HTTP.items()
            if code is not grpc.StatusCode.OK} == ENVOY_TABLE


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
