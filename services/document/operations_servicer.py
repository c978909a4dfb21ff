"""gRPC transport of `google.longrunning.Operations` for ImportDocument operations.

Operations are private per user: another user's operation answers NOT_FOUND, as a
document does. WaitOperation waits up to its `timeout` (30 s when unset, at most
MAX_WAIT_SECONDS, and never past the call's deadline), then answers the operation as
it is.
"""

from __future__ import annotations

import asyncio
import re
import time

import grpc
from google.longrunning import operations_pb2_grpc, operations_proto_pb2  # type: ignore[import-untyped]
from google.protobuf import empty_pb2
from google.rpc import code_pb2, status_pb2
from llmmesh.document.v1 import document_pb2

from services.document.library import DocumentLibrary
from services.document.operations import OperationState, OperationStore
from services.document.records import DocumentRecord
from services.runtime.context import current_user
from services.runtime.errors import FailedPrecondition, FieldViolation, InvalidArgument, NotFound
from services.runtime.names import document_name
from services.runtime.paging import decode_offset, encode_page_token, page_size
from services.runtime.timestamps import timestamp_from_seconds

OPERATION_NAME = re.compile(r"^operations/([0-9a-f]{32})$")
DEFAULT_WAIT_SECONDS = 30.0
MAX_WAIT_SECONDS = 55.0  # below the edge's 60 s unary timeout
POLL_SECONDS = 0.1


def operation_id(name: str, field: str = "name") -> str:
    match = OPERATION_NAME.match(name)
    if match is None:
        raise InvalidArgument([FieldViolation(field, "must be operations/{operation}")])
    return match.group(1)


def operation_name(operation: str) -> str:
    return f"operations/{operation}"


class OperationReader:
    """Reads operations as google.longrunning.Operation messages (shared by the
    Operations servicer and the document servicer)."""

    def __init__(self, operations: OperationStore, library: DocumentLibrary) -> None:
        self.operations = operations
        self._library = library

    async def state(self, user_id: str, name: str, field: str = "name") -> OperationState:
        """The caller's operation (NOT_FOUND for anyone else's)."""
        found = await self.operations.get(user_id, operation_id(name, field))
        if found is None:
            raise NotFound("operation", name)
        return found

    async def message(self, state: OperationState) -> operations_proto_pb2.Operation:
        record = None
        if state.done and state.result_document:
            try:
                record = await self._library.get(state.user_id, state.result_document)
            except NotFound:  # deleted since: the operation still names it
                record = None
        return to_operation(state, record)

    async def wait(self, user_id: str, name: str, seconds: float) -> OperationState:
        """The operation once done, or as it is after `seconds`."""
        deadline = time.monotonic() + seconds
        state = await self.state(user_id, name)
        while not state.done and time.monotonic() < deadline:
            await asyncio.sleep(min(POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            state = await self.state(user_id, name)
        return state


class OperationsServicer(operations_pb2_grpc.OperationsServicer):  # type: ignore[misc]
    def __init__(self, reader: OperationReader) -> None:
        self._reader = reader

    async def GetOperation(self, request: operations_proto_pb2.GetOperationRequest,
                           context: grpc.aio.ServicerContext[
                               operations_proto_pb2.GetOperationRequest,
                               operations_proto_pb2.Operation]
                           ) -> operations_proto_pb2.Operation:
        state = await self._reader.state(current_user().subject, request.name)
        return await self._reader.message(state)

    async def ListOperations(self, request: operations_proto_pb2.ListOperationsRequest,
                             context: grpc.aio.ServicerContext[
                                 operations_proto_pb2.ListOperationsRequest,
                                 operations_proto_pb2.ListOperationsResponse]
                             ) -> operations_proto_pb2.ListOperationsResponse:
        violations = []
        if request.name not in {"", "operations"}:
            violations.append(FieldViolation("name", "must be operations (or empty)"))
        if request.filter:
            violations.append(FieldViolation("filter", "filters are not supported"))
        if violations:
            raise InvalidArgument(violations)
        user_id = current_user().subject
        scope = f"operations:{user_id}"
        size = page_size(request.page_size, default=20, maximum=100)
        offset = decode_offset(request.page_token, scope)
        states, more = await self._reader.operations.page(user_id, offset, size)
        return operations_proto_pb2.ListOperationsResponse(
            operations=[await self._reader.message(s) for s in states],
            next_page_token=encode_page_token(scope, o=offset + size) if more else "")

    async def DeleteOperation(self, request: operations_proto_pb2.DeleteOperationRequest,
                              context: grpc.aio.ServicerContext[
                                  operations_proto_pb2.DeleteOperationRequest,
                                  empty_pb2.Empty]
                              ) -> empty_pb2.Empty:
        user_id = current_user().subject
        deleted = await self._reader.operations.delete(user_id, operation_id(request.name))
        if deleted == 0:
            raise NotFound("operation", request.name)
        if deleted < 0:
            raise FailedPrecondition("the operation is still running: cancel it first",
                                     reason="OPERATION_RUNNING",
                                     metadata={"operation": request.name})
        return empty_pb2.Empty()

    async def CancelOperation(self, request: operations_proto_pb2.CancelOperationRequest,
                              context: grpc.aio.ServicerContext[
                                  operations_proto_pb2.CancelOperationRequest,
                                  empty_pb2.Empty]
                              ) -> empty_pb2.Empty:
        """Ends a running operation as CANCELLED (its worker rolls the document back);
        an operation that is over stays as it ended."""
        user_id = current_user().subject
        state = await self._reader.state(user_id, request.name)
        if not state.done:
            await self._reader.operations.fail(user_id, state.id, cancelled_status(),
                                               cancelled=True)
        return empty_pb2.Empty()

    async def WaitOperation(self, request: operations_proto_pb2.WaitOperationRequest,
                            context: grpc.aio.ServicerContext[
                                operations_proto_pb2.WaitOperationRequest,
                                operations_proto_pb2.Operation]
                            ) -> operations_proto_pb2.Operation:
        seconds = DEFAULT_WAIT_SECONDS
        if request.HasField("timeout"):
            seconds = request.timeout.ToTimedelta().total_seconds()
            if seconds < 0:
                raise InvalidArgument([FieldViolation("timeout", "must not be negative")])
        seconds = min(seconds, MAX_WAIT_SECONDS)
        remaining = context.time_remaining()
        if remaining is not None:  # answer before the caller's deadline
            seconds = min(seconds, max(0.0, remaining - 0.5))
        state = await self._reader.wait(current_user().subject, request.name, seconds)
        return await self._reader.message(state)


def cancelled_status() -> status_pb2.Status:
    """The error of a cancelled operation (AIP-151: google.rpc.Code.CANCELLED)."""
    return status_pb2.Status(code=code_pb2.CANCELLED, message="the operation was cancelled")


def to_operation(state: OperationState,
                 record: DocumentRecord | None) -> operations_proto_pb2.Operation:
    metadata = document_pb2.ImportDocumentMetadata(
        stage=document_pb2.IngestStage.ValueType(state.stage),
        embedded_chunks=state.embedded, total_chunks=state.total,
        size_bytes=state.size, filename=state.filename, collection=state.collection,
        create_time=timestamp_from_seconds(state.create_time),
        update_time=timestamp_from_seconds(state.update_time),
        cancel_requested=state.cancel_requested, attempts=state.attempts)
    operation = operations_proto_pb2.Operation(name=operation_name(state.id), done=state.done)
    operation.metadata.Pack(metadata)
    if state.done and state.error is not None:
        operation.error.CopyFrom(state.error)
    elif state.done:
        operation.response.Pack(document_message(state, record))
    return operation


def document_message(state: OperationState,
                     record: DocumentRecord | None) -> document_pb2.Document:
    if record is None:
        return document_pb2.Document(name=document_name(state.result_document),
                                     deduplicated=state.deduplicated)
    return document_pb2.Document(
        name=document_name(record.id), collection=record.collection, filename=record.filename,
        content_type=record.content_type, size_bytes=record.size, chunk_count=record.chunks,
        sha256=record.sha256, create_time=timestamp_from_seconds(record.create_time),
        deduplicated=state.deduplicated)
