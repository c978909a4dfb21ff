"""Domain errors across a process boundary, both ways, without sockets: what a handler
aborts with (abort_status) is exactly what a caller reads back (from_peer)."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from services.runtime.errors import (
    AlreadyExists,
    DeadlineExceeded,
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    LlmmeshError,
    NotFound,
    PermissionDenied,
    QuotaViolation,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    Unimplemented,
    from_status,
    to_status,
)
from services.runtime.rpc_errors import abort_status, from_peer, peer_status

EVERY_KIND: list[LlmmeshError] = [
    InvalidArgument([FieldViolation("user.email", "is required"),
                     FieldViolation("password", "too short")], reason="BAD_SIGNUP"),
    Unauthenticated("token expired", reason="TOKEN_EXPIRED"),
    PermissionDenied("service only"),
    NotFound("document", "documents/" + "a" * 32),
    AlreadyExists("user", "users/bob", metadata={"username": "bob"}),
    FailedPrecondition("model refused", reason="MODEL_REJECTED", metadata={"model": "m"}),
    ResourceExhausted("over quota", reason="TOKEN_QUOTA_EXHAUSTED", retry_after_seconds=7.5,
                      violations=[QuotaViolation("users/u1", "monthly tokens")]),
    Unavailable("down", reason="REDIS_UNAVAILABLE", retry_after_seconds=1.0),
    Unavailable("down, no hint"),
    DeadlineExceeded("slow", reason="MODEL_TIMEOUT"),
    Unimplemented("later"),
    Internal("boom (request id r1)"),
]


def _shape(error: LlmmeshError) -> tuple[object, ...]:
    return (type(error), error.code, error.message, error.reason, error.metadata,
            [d.SerializeToString() for d in error.details()])


def peer_failure(error: LlmmeshError | None = None, *, code: grpc.StatusCode | None = None,
                 details: str = "", trailers: tuple[tuple[str, str | bytes], ...] = ()
                 ) -> grpc.aio.AioRpcError:
    """The AioRpcError a caller gets when the peer's handler raised `error` (through
    the interceptor's abort_status), or a bare status when `error` is None."""
    if error is not None:
        status = abort_status(error, trailers)
        code, details, trailers = status.code, status.details, status.trailing_metadata
    assert code is not None
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers),
                                details=details)


@pytest.mark.parametrize("error", EVERY_KIND, ids=lambda e: type(e).__name__)
def test_from_status_inverts_to_status(error: LlmmeshError) -> None:
    assert _shape(from_status(to_status(error))) == _shape(error)


def test_a_code_outside_the_hierarchy_becomes_internal() -> None:
    error = from_status(status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0],
                                          message="conflict"))
    assert isinstance(error, Internal)
    assert (error.message, error.reason, error.metadata) == ("conflict", "INTERNAL",
                                                             {"code": "ABORTED"})


def test_abort_status_carries_the_rich_status_after_the_given_trailers() -> None:
    error = ResourceExhausted("slow down", reason="RATE", retry_after_seconds=2.0)
    status = abort_status(error, (("x-request-id", "r-1"),))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "slow down"
    assert status.trailing_metadata[0] == ("x-request-id", "r-1")
    (key, packed), = status.trailing_metadata[1:]
    assert key == "grpc-status-details-bin"
    assert status_pb2.Status.FromString(packed) == to_status(error)
    assert rpc_status.from_call(peer_failure(error)) == to_status(error)


@pytest.mark.parametrize("error", [
    ResourceExhausted("over quota", reason="TOKEN_QUOTA_EXHAUSTED", retry_after_seconds=30.0,
                      violations=[QuotaViolation("users/u1", "monthly tokens")],
                      metadata={"limit": "100"}),
    Unauthenticated("token expired", reason="TOKEN_EXPIRED"),
    NotFound("document", "documents/" + "b" * 32),
    AlreadyExists("document", "documents/" + "c" * 32),
], ids=lambda e: type(e).__name__)
def test_the_callers_own_errors_pass_through_whole(error: LlmmeshError) -> None:
    assert _shape(from_peer(peer_failure(error), "auth")) == _shape(error)


def test_field_violations_move_under_the_callers_field() -> None:
    error = InvalidArgument([FieldViolation("documents[0]", "must be documents/{document}"),
                             FieldViolation("", "bad request")], reason="BAD_SEARCH")
    mapped = from_peer(peer_failure(error), "document", field_prefix="options.")
    assert isinstance(mapped, InvalidArgument)
    assert mapped.violations == [
        FieldViolation("options.documents[0]", "must be documents/{document}"),
        FieldViolation("options", "bad request")]
    assert mapped.reason == "BAD_SEARCH"


def test_field_violations_on_a_request_we_built_are_our_bug() -> None:
    error = InvalidArgument([FieldViolation("texts", "at least one text is required")])
    mapped = from_peer(peer_failure(error), "embedding")
    assert isinstance(mapped, Internal)
    assert mapped.reason == "EMBEDDING_FAILED"
    assert mapped.metadata == {"peer": "embedding", "peer_code": "INVALID_ARGUMENT"}


@pytest.mark.parametrize(("failure", "kind", "reason", "retry"), [
    (peer_failure(code=grpc.StatusCode.DEADLINE_EXCEEDED, details="Deadline Exceeded"),
     DeadlineExceeded, "EMBEDDING_TIMEOUT", None),
    (peer_failure(code=grpc.StatusCode.UNAVAILABLE, details="failed to connect"),
     Unavailable, "EMBEDDING_UNAVAILABLE", 1.0),
    (peer_failure(Unavailable("provider down", reason="MODEL_UNAVAILABLE",
                              retry_after_seconds=9.0)),
     Unavailable, "EMBEDDING_UNAVAILABLE", 1.0),
    (peer_failure(code=grpc.StatusCode.CANCELLED, details="cancelled"),
     Unavailable, "EMBEDDING_UNAVAILABLE", 1.0),
    (peer_failure(code=grpc.StatusCode.RESOURCE_EXHAUSTED, details="message too large"),
     ResourceExhausted, "EMBEDDING_EXHAUSTED", 1.0),
    (peer_failure(Internal("boom")), Internal, "EMBEDDING_FAILED", None),
    (peer_failure(FailedPrecondition("refused", reason="MODEL_REJECTED")),
     Internal, "EMBEDDING_FAILED", None),
    (peer_failure(PermissionDenied("service token refused")),
     Internal, "EMBEDDING_FAILED", None),
    (peer_failure(code=grpc.StatusCode.UNKNOWN, details="?"), Internal, "EMBEDDING_FAILED",
     None),
], ids=["deadline", "unavailable", "unavailable-rich", "cancelled", "exhausted-bare",
        "internal", "failed-precondition", "permission-denied", "unknown"])
def test_the_peers_own_trouble_is_named_after_the_peer(
        failure: grpc.aio.AioRpcError, kind: type[LlmmeshError], reason: str,
        retry: float | None) -> None:
    mapped = from_peer(failure, "embedding")
    assert type(mapped) is kind
    assert mapped.reason == reason
    assert mapped.metadata["peer_code"] == failure.code().name
    assert getattr(mapped, "retry_after_seconds", None) == retry
    assert "embedding" in mapped.message


def test_a_status_that_disagrees_with_the_call_is_ignored() -> None:
    status = to_status(ResourceExhausted("over quota", reason="TOKEN_QUOTA_EXHAUSTED"))
    rewritten = peer_failure(code=grpc.StatusCode.RESOURCE_EXHAUSTED, details="rewritten",
                             trailers=(("grpc-status-details-bin", status.SerializeToString()),))
    assert peer_status(rewritten) is None
    assert from_peer(rewritten, "quota").reason == "QUOTA_EXHAUSTED"


def test_unknown_details_are_skipped() -> None:
    error = ResourceExhausted("over quota", reason="TOKEN_QUOTA_EXHAUSTED")
    status = to_status(error)
    status.details.add().Pack(error_details_pb2.Help(links=[error_details_pb2.Help.Link(
        description="docs", url="https://example.com")]))
    failure = peer_failure(code=error.code, details=error.message,
                           trailers=(("grpc-status-details-bin", status.SerializeToString()),))
    assert _shape(from_peer(failure, "auth")) == _shape(error)
