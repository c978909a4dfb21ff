"""Domain errors across a process boundary, both ways, through grpcio-status.

Out: `abort_status` is the grpc.Status a handler aborts with (`abort_with_status`): the
error's google.rpc.Status in the `grpc-status-details-bin` trailer.

In: `from_peer` turns a failed call to another llmmesh service into our own error.

    RESOURCE_EXHAUSTED, UNAUTHENTICATED,   the peer's error as it stated it (reason,
    NOT_FOUND, ALREADY_EXISTS              metadata, QuotaFailure, RetryInfo, ResourceInfo)
    INVALID_ARGUMENT                       the same, with field paths under `field_prefix`
                                           when the caller's own fields travelled to the peer
    DEADLINE_EXCEEDED                      DEADLINE_EXCEEDED  {PEER}_TIMEOUT
    UNAVAILABLE, CANCELLED                 UNAVAILABLE        {PEER}_UNAVAILABLE + RetryInfo
    RESOURCE_EXHAUSTED without our status  RESOURCE_EXHAUSTED {PEER}_EXHAUSTED + RetryInfo
    anything else                          INTERNAL           {PEER}_FAILED (our bug, or the
                                                              peer's: retrying will not help)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.rpc import status_pb2
from grpc_status import rpc_status

from services.runtime.errors import (
    DeadlineExceeded,
    FieldViolation,
    Internal,
    InvalidArgument,
    LlmmeshError,
    ResourceExhausted,
    Unavailable,
    from_status,
    to_status,
)

PEER_RETRY_SECONDS = 1.0
_PASSED_THROUGH = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAUTHENTICATED,
                             grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS})
_TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})

Trailer = tuple[str, str | bytes]


@dataclass(frozen=True)
class _Status(grpc.Status):
    code: grpc.StatusCode
    details: str
    trailing_metadata: tuple[Trailer, ...]


def abort_status(error: LlmmeshError, trailing_metadata: Sequence[Trailer] = ()) -> grpc.Status:
    """The grpc.Status to end a call with for `error`, plus `trailing_metadata`
    (abort_with_status replaces any trailers set before)."""
    status = rpc_status.to_status(to_status(error))
    return _Status(code=status.code, details=status.details,
                   trailing_metadata=(*trailing_metadata, *status.trailing_metadata))


def peer_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The google.rpc.Status a failed call carries; None when it has none (or one that
    disagrees with the call's code or message, e.g. rewritten on the way)."""
    try:
        # from_call reads only code(), details() and trailing_metadata(), which an
        # AioRpcError has; types-grpcio-status types the parameter as the sync grpc.Call.
        status: status_pb2.Status | None = rpc_status.from_call(error)  # type: ignore[arg-type]
    except ValueError:
        return None
    return status


def from_peer(error: grpc.aio.AioRpcError, peer: str, *,
              field_prefix: str | None = None) -> LlmmeshError:
    """Our error for a failed call to `peer` (e.g. "document"); see the module's table.

    `field_prefix` (e.g. "options.") says the request's fields came from the caller's
    own, so the peer's field violations are theirs; without it they are our bug."""
    code = error.code()
    status = peer_status(error)
    stated = from_status(status) if status is not None else None
    if isinstance(stated, InvalidArgument) and field_prefix is not None:
        return InvalidArgument(
            [FieldViolation(field_prefix + v.field if v.field else field_prefix.rstrip("."),
                            v.description) for v in stated.violations],
            reason=stated.reason, metadata=stated.metadata)
    if stated is not None and code in _PASSED_THROUGH:
        return stated
    tag = peer.upper()
    metadata = {"peer": peer, "peer_code": code.name}
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"{peer} did not answer in time", reason=f"{tag}_TIMEOUT",
                                metadata=metadata)
    if code in _TRANSIENT:
        return Unavailable(f"{peer} service is unavailable", reason=f"{tag}_UNAVAILABLE",
                           retry_after_seconds=PEER_RETRY_SECONDS, metadata=metadata)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(f"{peer} service is over capacity", reason=f"{tag}_EXHAUSTED",
                                 retry_after_seconds=PEER_RETRY_SECONDS, metadata=metadata)
    return Internal(f"{peer} service failed ({code.name})", reason=f"{tag}_FAILED",
                    metadata=metadata)
