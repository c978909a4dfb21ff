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
`llmmesh` domain and the message's variables as metadata. `to_status` and
`from_status` turn an error into that google.rpc.Status and back;
services/runtime/rpc_errors.py puts it on the wire and reads it off a peer's call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypedDict, Unpack

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
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


class ErrorOptions(TypedDict, total=False):
    """LlmmeshError's keyword arguments, which every error passes on."""

    reason: str | None
    metadata: Mapping[str, str] | None


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

    def details(self) -> list[Message]:
        """Typed google.rpc details besides ErrorInfo."""
        return []


class InvalidArgument(LlmmeshError):
    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None,
                 **kwargs: Unpack[ErrorOptions]) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = list(violations)
        text = message or "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(text, **kwargs)

    def details(self) -> list[Message]:
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
                 **kwargs: Unpack[ErrorOptions]) -> None:
        self.resource_type = resource_type
        self.resource_name = resource_name
        super().__init__(message or self._message(), **kwargs)
        self.metadata.setdefault("resource", resource_name)

    def _message(self) -> str:
        raise NotImplementedError

    def details(self) -> list[Message]:
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
                 retry_after_seconds: float | None = None, **kwargs: Unpack[ErrorOptions]) -> None:
        super().__init__(message, **kwargs)
        self.violations = list(violations)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[Message]:
        found: list[Message] = []
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
                 **kwargs: Unpack[ErrorOptions]) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_seconds = retry_after_seconds

    def details(self) -> list[Message]:
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
        container.Pack(detail)
        packed.append(container)
    return status_pb2.Status(
        code=_CODE_NUMBERS[error.code], message=error.message, details=packed
    )


def from_status(status: status_pb2.Status) -> LlmmeshError:
    """The domain error a google.rpc.Status describes: the inverse of `to_status`.

    Reason, metadata and typed details are kept; a code outside the hierarchy (e.g.
    CANCELLED, UNKNOWN) becomes Internal with the code's name in its metadata."""
    details = _unpack(status.details)
    info = details.get(error_details_pb2.ErrorInfo)
    reason = getattr(info, "reason", "") or None
    metadata = dict(getattr(info, "metadata", {}))
    code = _CODES_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
    message = status.message
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        bad = details.get(error_details_pb2.BadRequest)
        fields = [FieldViolation(v.field, v.description)
                  for v in getattr(bad, "field_violations", ())]
        return InvalidArgument(fields or [FieldViolation("", message)], message,
                               reason=reason, metadata=metadata)
    if code in {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS}:
        resource = details.get(error_details_pb2.ResourceInfo)
        kind = NotFound if code == grpc.StatusCode.NOT_FOUND else AlreadyExists
        return kind(getattr(resource, "resource_type", ""),
                    getattr(resource, "resource_name", ""), message,
                    reason=reason, metadata=metadata)
    retry = details.get(error_details_pb2.RetryInfo)
    retry_after = (retry.retry_delay.ToTimedelta().total_seconds()
                   if isinstance(retry, error_details_pb2.RetryInfo) else None)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        failure = details.get(error_details_pb2.QuotaFailure)
        quota = [QuotaViolation(v.subject, v.description)
                 for v in getattr(failure, "violations", ())]
        return ResourceExhausted(message, violations=quota, retry_after_seconds=retry_after,
                                 reason=reason, metadata=metadata)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(message, retry_after_seconds=retry_after, reason=reason,
                           metadata=metadata)
    simple = _SIMPLE_CLASSES.get(code)
    if simple is None:
        metadata.setdefault("code", code.name)
        return Internal(message, reason=reason, metadata=metadata)
    return simple(message, reason=reason, metadata=metadata)


def _unpack(packed: Sequence[any_pb2.Any]) -> dict[type[Message], Message]:
    found: dict[type[Message], Message] = {}
    for container in packed:
        kind = _DETAIL_KINDS.get(container.TypeName())
        if kind is not None and kind not in found:
            detail = kind()
            container.Unpack(detail)
            found[kind] = detail
    return found


_DETAIL_KINDS: dict[str, type[Message]] = {kind.DESCRIPTOR.full_name: kind for kind in (
    error_details_pb2.ErrorInfo, error_details_pb2.BadRequest, error_details_pb2.ResourceInfo,
    error_details_pb2.QuotaFailure, error_details_pb2.RetryInfo)}
_SIMPLE_CLASSES: dict[grpc.StatusCode, type[LlmmeshError]] = {
    kind.code: kind for kind in (Unauthenticated, PermissionDenied, FailedPrecondition,
                                 DeadlineExceeded, Unimplemented, Internal)}
_CODE_NUMBERS = {code: code.value[0] for code in grpc.StatusCode}
_CODES_BY_NUMBER = {number: code for code, number in _CODE_NUMBERS.items()}
assert _CODE_NUMBERS[grpc.StatusCode.NOT_FOUND] == code_pb2.NOT_FOUND


def check_fields(violations: Sequence[FieldViolation | None]) -> None:
    """Raise InvalidArgument with every violation found (None entries are passes)."""
    found = [v for v in violations if v is not None]
    if found:
        raise InvalidArgument(found)
