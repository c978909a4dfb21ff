"""gRPC status -> HTTP, as Envoy's transcoder maps it (`Grpc::Utility::grpcToHttpStatus`),
and the two kinds of error body the edges send:

- an upstream gRPC error: its `google.rpc.Status` (from `grpc-status-details-bin`, else
  built from grpc-status and grpc-message) printed as JSON, like `convert_grpc_status`;
  when a detail's type is unknown the body is empty and the status travels in the
  `grpc-status` / `grpc-message` headers, as the transcoder falls back;
- a reply the edge makes itself (JWT 401/403, 404, 429, 503, 504): `{"code": <gRPC
  code>, "message": <text>}` JSON, the shape Envoy's `local_reply_config` gives them;
  other local replies (400 bad JSON, 413 body too large) are text/plain, as the
  transcoder makes them.
"""

from __future__ import annotations

import json

import grpc
from google.protobuf import descriptor_pool, json_format
from google.rpc import status_pb2

from gateway.envoy_config import LOCAL_REPLY_CODES

GRPC_TO_HTTP = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
DETAILS_KEY = "grpc-status-details-bin"


def http_status(code: grpc.StatusCode | None) -> int:
    """The HTTP status for a gRPC code; no status at all is 503."""
    return 503 if code is None else GRPC_TO_HTTP.get(code, 500)


def rpc_status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    """The error's google.rpc.Status: the trailer's, else code and message."""
    for key, value in error.trailing_metadata() or ():
        if key == DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.ParseFromString(value)
            except ValueError:
                break
            return status
    return status_pb2.Status(code=error.code().value[0], message=error.details() or "")


def error_body(error: grpc.aio.AioRpcError,
               pool: descriptor_pool.DescriptorPool) -> tuple[bytes, dict[str, str]]:
    """(JSON body, extra headers) for an upstream error."""
    status = rpc_status(error)
    try:
        data = json_format.MessageToDict(status, descriptor_pool=pool)
    except (json_format.Error, TypeError, KeyError):
        return b"", {"grpc-status": str(error.code().value[0]),
                     "grpc-message": error.details() or ""}
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode(), {}


def local_reply(status: int, message: str) -> tuple[bytes, str]:
    """(body, content type) of a reply the edge makes itself."""
    code = LOCAL_REPLY_CODES.get(status)
    if code is None:
        return message.encode(), "text/plain"
    body = json.dumps({"code": code, "message": message}, separators=(",", ":"))
    return body.encode(), "application/json"
