"""Domain errors and their one mapping to gRPC status codes with google.rpc details.

    LlmmeshError
     ├── InvalidArgument      INVALID_ARGUMENT  + BadRequest field violations
     ├── Unauthenticated      UNAUTHENTICATED
     ├── PermissionDenied     PERMISSION_DENIED
     ├── NotFound             NOT_FOUND         + ResourceInfo
     ├── AlreadyExists        ALREADY_EXISTS    + ResourceInfo
     ├── FailedPrecondition   FAILED_PRECONDITION
     ├── ResourceExhausted    RESOURCE_EXHAUSTED + QuotaFailure, RetryInfo
     ├── Unavailable          UNAVAILABLE       + RetryInfo
     ├── DeadlineExceeded     DEADLINE_EXCEEDED
     ├── Unimplemented        UNIMPLEMENTED
     └── Internal             INTERNAL

Every status carries one ErrorInfo (AIP-193): an UPPER_SNAKE `reason`, the
`llmmesh` domain and the message's variables as metadata.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

ERROR_DOMAIN = "llmmesh"


@dataclass(frozen=True)
class FieldViolation:
    """One invalid request field (a dotted path, e.g. `user.email`)."""

    field: str
    description: str


@dataclass(frozen=True)
class QuotaViolation:
    """One exceeded quota."""

    subject: str
    description: str


class LlmmeshError(Exception):
    """An error the caller should see, with its gRPC code and ErrorInfo reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"

    def __init__(self, message: str, *, reason: str | None = None,
                 metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[object]:
        """Typed google.rpc details besides ErrorInfo."""
        return []


class InvalidArgument(LlmmeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None,
                 **kwargs: object) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = list(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text, **kwargs)  # type: ignore[arg-type]

    def details(self) -> list[object]:
        return [error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in self.violations
        ])]


class Unauthenticated(LlmmeshError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(LlmmeshError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class _ResourceError(LlmmeshError):
    def __init__(self, resource_type: str, resource_name: str, message: str | None = None,
                 **kwargs: object) -> None:
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(message or self._message(), **kwargs)  # type: ignore[arg-type]
        self.metadata.setdefault("resource", resource_name)

    def _message(self) -> str:
        raise NotImplementedError

    def details(self) -> list[object]:
        return [error_details_pb2.ResourceInfo(
            resource_type=self.resource_type, resource_name=self.resource_name
        )]


class NotFound(_ResourceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"

    def _message(self) -> str:
        return f"{self.resource_type} {self.resource_name!r} not found"


class AlreadyExists(_ResourceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"

    def _message(self) -> str:
        return f"{self.resource_type} {self.resource_name!r} already exists"


class FailedPrecondition(LlmmeshError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class ResourceExhausted(LlmmeshError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, violations: Sequence[QuotaViolation] = (),
                 retry_after_seconds: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.violations = list(violations)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[object]:
        found: list[object] = []
        if self.violations:
            found.append(error_details_pb2.QuotaFailure(violations=[
                error_details_pb2.QuotaFailure.Violation(subject=v.subject,
                                                         description=v.description)
                for v in self.violations
            ]))
        if self.retry_after_seconds is not None:
            found.append(_retry_info(self.retry_after_seconds))
        return found


class Unavailable(LlmmeshError):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_seconds: float | None = None,
                 **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[object]:
        if self.retry_after_seconds is None:
            return []
        return [_retry_info(self.retry_after_seconds)]


class DeadlineExceeded(LlmmeshError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


class Unimplemented(LlmmeshError):
    code = grpc.StatusCode.UNIMPLEMENTED
    default_reason = "UNIMPLEMENTED"


class Internal(LlmmeshError):
    code = grpc.StatusCode.INTERNAL
    default_reason = "INTERNAL"


def _retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(seconds * 1e9))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def to_status(error: LlmmeshError) -> status_pb2.Status:
    """The google.rpc.Status for a domain error: ErrorInfo first, then typed details."""
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=ERROR_DOMAIN, metadata=error.metadata
    )
    packed = []
    for detail in [info, *error.details()]:
        container = any_pb2.Any()
        container.Pack(detail)  # type: ignore[arg-type]
        packed.append(container)
    return status_pb2.Status(
        code=_CODE_NUMBERS[error.code], message=error.message, details=packed
    )


def status_trailers(status: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata carrying a rich status, as grpcio-status does."""
    return (("grpc-status-details-bin", status.SerializeToString()),)


_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}
assert _CODE_NUMBERS[grpc.StatusCode.NOT_FOUND] == code_pb2.NOT_FOUND


def check_fields(violations: Sequence[FieldViolation | None]) -> None:
    """Raise InvalidArgument with every violation found (None entries are passes)."""
    found = [v for v in violations if v is not None]
    if found:
        raise InvalidArgument(found)
