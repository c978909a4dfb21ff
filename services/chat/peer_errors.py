"""Turning a peer's gRPC error into our own domain error, keeping what the caller
needs (quota violations, field violations) and hiding the rest."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2, status_pb2

from services.runtime.errors import (
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    LlmmeshError,
    NotFound,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)


def from_peer(error: grpc.aio.AioRpcError, peer: str, *, field_prefix: str = "") -> LlmmeshError:
    """The domain error for a failed call to `peer` (e.g. "document")."""
    code = error.code()
    details = _details(error)
    info = details.get(error_details_pb2.ErrorInfo)
    reason = info.reason if isinstance(info, error_details_pb2.ErrorInfo) else None
    metadata = dict(info.metadata) if isinstance(info, error_details_pb2.ErrorInfo) else {}
    message = error.details() or f"{peer} failed"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        failure = details.get(error_details_pb2.QuotaFailure)
        violations = [QuotaViolation(v.subject, v.description)
                      for v in getattr(failure, "violations", [])]
        return ResourceExhausted(message, violations=violations, reason=reason,
                                 metadata=metadata)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        bad = details.get(error_details_pb2.BadRequest)
        fields = [FieldViolation(field_prefix + v.field, v.description)
                  for v in getattr(bad, "field_violations", [])]
        return InvalidArgument(fields or [FieldViolation(field_prefix.rstrip("."), message)],
                               reason=reason)
    if code == grpc.StatusCode.NOT_FOUND:
        resource = details.get(error_details_pb2.ResourceInfo)
        if isinstance(resource, error_details_pb2.ResourceInfo):
            return NotFound(resource.resource_type, resource.resource_name)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(message, reason=reason)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{peer} did not answer in time",
                                reason=f"{peer.upper()}_TIMEOUT")
    return Unavailable(f"{peer} service failed ({code.name})",
                       reason=f"{peer.upper()}_UNAVAILABLE", retry_after_seconds=1.0,
                       metadata={"peer_code": code.name})


def _details(error: grpc.aio.AioRpcError) -> dict[type, object]:
    found: dict[type, object] = {}
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        status.ParseFromString(value)
        for packed in status.details:
            for kind in (error_details_pb2.ErrorInfo, error_details_pb2.QuotaFailure,
                         error_details_pb2.BadRequest, error_details_pb2.ResourceInfo):
                if packed.Is(kind.DESCRIPTOR):
                    detail = kind()
                    packed.Unpack(detail)
                    found[kind] = detail
    return found
