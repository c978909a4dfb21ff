"""gRPC transport for documents: unpack, call the pipeline or the library, pack."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

import grpc
from google.longrunning import operations_proto_pb2  # type: ignore[import-untyped]
from google.protobuf import empty_pb2
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from services.document.ingestion import Ingestor, Progress, Stage, Upload
from services.document.library import DocumentLibrary
from services.document.operations import (
    OPERATION_STAGE_DONE,
    OperationState,
    new_operation_id,
)
from services.document.operations_servicer import POLL_SECONDS, OperationReader
from services.document.parsing import precheck
from services.document.queue import IngestQueue
from services.document.records import DocumentRecord
from services.document.validation import (
    check_search,
    check_source,
    collection_violation,
    document_id,
)
from services.runtime.context import current_user
from services.runtime.errors import (
    FailedPrecondition,
    FieldViolation,
    Internal,
    InvalidArgument,
    LlmmeshError,
    Unimplemented,
    check_fields,
    to_status,
)
from services.runtime.names import document_name
from services.runtime.paging import decode_offset, encode_page_token, page_size, paginate
from services.runtime.timestamps import timestamp_from_seconds

log = logging.getLogger("llmmesh.document")

_STAGES = {stage: document_pb2.IngestStage.Value(f"INGEST_STAGE_{stage.name}")
           for stage in Stage}


class DocumentServicer(document_pb2_grpc.DocumentServiceServicer):
    """`queue` and `operations` serve ImportDocument and following an operation (without
    them those answer UNIMPLEMENTED); `sync_max_bytes` (default: the upload limit) bounds
    what is ingested within a call."""

    def __init__(self, ingestor: Ingestor, library: DocumentLibrary,
                 max_upload_bytes: int, *, sync_max_bytes: int | None = None,
                 queue: IngestQueue | None = None,
                 operations: OperationReader | None = None) -> None:
        self._ingestor = ingestor
        self._library = library
        self._max_bytes = max_upload_bytes
        self._sync_max_bytes = max_upload_bytes if sync_max_bytes is None else sync_max_bytes
        self._queue = queue
        self._operations_ = operations

    async def CreateDocument(self, request: document_pb2.CreateDocumentRequest,
                             context: grpc.aio.ServicerContext[
                                 document_pb2.CreateDocumentRequest, document_pb2.Document]
                             ) -> document_pb2.Document:
        upload = self._sync_upload(request.source, request.content)
        done = await self._ingestor.ingest(current_user().subject, upload)
        return _document(done)

    async def UploadDocument(self, request_iterator: AsyncIterator[
            document_pb2.UploadDocumentRequest],
            context: grpc.aio.ServicerContext[
                document_pb2.UploadDocumentRequest, document_pb2.Document]
            ) -> document_pb2.Document:
        source: document_pb2.DocumentSource | None = None
        parts: list[bytes] = []
        received = 0
        async for message in request_iterator:
            if message.HasField("source"):
                if source is not None or parts:
                    raise _invalid("source", "send the source once, as the first message")
                source = message.source
                check_source(source.filename, source.collection)
                continue
            if source is None:
                raise _invalid("source", "the first message must carry the source")
            received += len(message.content)
            if received > self._max_bytes:  # stop reading: never buffer past the limit
                raise _too_large(self._max_bytes)
            if received > self._sync_max_bytes:  # refused at the end: keep counting only
                parts.clear()
                continue
            parts.append(message.content)
        if source is None:
            raise _invalid("source", "the stream carried no source")
        if received > self._sync_max_bytes:
            raise _use_import(self._sync_max_bytes)
        done = await self._ingestor.ingest(current_user().subject,
                                           self._sync_upload(source, b"".join(parts)))
        return _document(done)

    async def ImportDocument(self, request: document_pb2.ImportDocumentRequest,
                             context: grpc.aio.ServicerContext[
                                 document_pb2.ImportDocumentRequest,
                                 operations_proto_pb2.Operation]
                             ) -> operations_proto_pb2.Operation:
        upload = self._upload(request.source, request.content)
        precheck(upload.content, upload.claimed_type)
        user = current_user()
        user_id = user.subject
        store = self._operations.operations
        queue = self._queue
        if queue is None:
            raise Unimplemented("long-running operations are not configured here")
        operation_id = new_operation_id()
        # Noted first: should this process die before queueing, a worker queues it.
        await queue.intend(user_id, operation_id, time.time())
        state = await store.create(user_id, upload.filename, upload.collection,
                                   upload.claimed_type, upload.content, operation_id)
        try:
            await queue.add(user_id, state.id)
        except BaseException:
            # Not queued: end it now rather than leave an operation no worker will run
            # (if Redis is gone too, the upload's TTL ends it: the caller sees the error).
            with contextlib.suppress(Exception):
                await asyncio.shield(store.fail(user_id, state.id, to_status(
                    Internal("the upload could not be queued", reason="NOT_QUEUED"))))
            raise
        return await self._operations.message(state)

    async def IngestDocument(self, request: document_pb2.IngestDocumentRequest,
                             context: grpc.aio.ServicerContext[
                                 document_pb2.IngestDocumentRequest,
                                 document_pb2.IngestDocumentResponse]
                             ) -> AsyncIterator[document_pb2.IngestDocumentResponse]:
        if request.operation:
            if request.HasField("source") or request.content:
                raise _invalid("operation", "send either an operation to follow, or a file")
            async for followed in self._follow(request.operation):
                yield followed
            return
        upload = self._sync_upload(request.source, request.content)  # bad input: status
        user_id = current_user().subject
        events: asyncio.Queue[Progress | BaseException] = asyncio.Queue()
        task = asyncio.create_task(self._ingestor.ingest(user_id, upload, events.put_nowait))

        def forward_failure(finished: asyncio.Task[Progress]) -> None:
            if finished.cancelled():
                return
            error = finished.exception()
            if error is not None:
                events.put_nowait(error)

        task.add_done_callback(forward_failure)
        try:
            while True:
                event = await events.get()
                if isinstance(event, BaseException):
                    yield _failed(event)
                    return
                yield _progress(event)
                if event.stage is Stage.DONE:
                    return
        finally:
            if not task.done():  # the client went away: stop and roll back
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    async def SearchDocuments(self, request: document_pb2.SearchDocumentsRequest,
                              context: grpc.aio.ServicerContext[
                                  document_pb2.SearchDocumentsRequest,
                                  document_pb2.SearchDocumentsResponse]
                              ) -> document_pb2.SearchDocumentsResponse:
        min_score = request.min_score if request.HasField("min_score") else None
        k = check_search(request.query, request.k if request.HasField("k") else None,
                         request.collection, min_score)
        ids = [document_id(name, f"documents[{i}]") for i, name in enumerate(request.documents)]
        hits = await self._library.search(current_user().subject, request.query, k,
                                          collection=request.collection, document_ids=ids,
                                          min_score=min_score)
        return document_pb2.SearchDocumentsResponse(results=[
            document_pb2.SearchResult(document=document_name(h.document_id),
                                      filename=h.filename, collection=h.collection,
                                      chunk_index=h.chunk_index, score=h.score, text=h.text)
            for h in hits])

    async def GetDocument(self, request: document_pb2.GetDocumentRequest,
                          context: grpc.aio.ServicerContext[
                              document_pb2.GetDocumentRequest, document_pb2.Document]
                          ) -> document_pb2.Document:
        record = await self._library.get(current_user().subject, document_id(request.name))
        return _resource(record)

    async def ListDocuments(self, request: document_pb2.ListDocumentsRequest,
                            context: grpc.aio.ServicerContext[
                                document_pb2.ListDocumentsRequest,
                                document_pb2.ListDocumentsResponse]
                            ) -> document_pb2.ListDocumentsResponse:
        user_id = current_user().subject
        check_fields([collection_violation(request.collection, "collection")])
        scope = f"documents:{user_id}:{request.collection}"
        size = page_size(request.page_size, default=20, maximum=100)
        offset = decode_offset(request.page_token, scope)
        records, more = await self._library.page(user_id, offset, size, request.collection)
        return document_pb2.ListDocumentsResponse(
            documents=[_resource(r) for r in records],
            next_page_token=encode_page_token(scope, o=offset + size) if more else "")

    async def DeleteDocument(self, request: document_pb2.DeleteDocumentRequest,
                             context: grpc.aio.ServicerContext[
                                 document_pb2.DeleteDocumentRequest, empty_pb2.Empty]
                             ) -> empty_pb2.Empty:
        await self._library.delete(current_user().subject, document_id(request.name))
        return empty_pb2.Empty()

    async def ListCollections(self, request: document_pb2.ListCollectionsRequest,
                              context: grpc.aio.ServicerContext[
                                  document_pb2.ListCollectionsRequest,
                                  document_pb2.ListCollectionsResponse]
                              ) -> document_pb2.ListCollectionsResponse:
        user_id = current_user().subject
        found = await self._library.collections(user_id)
        page = paginate(found, request, f"collections:{user_id}", default=50, maximum=100)
        return document_pb2.ListCollectionsResponse(
            collections=[document_pb2.Collection(name=f"collections/{c.name}",
                                                 document_count=c.documents,
                                                 chunk_count=c.chunks) for c in page.items],
            next_page_token=page.next_page_token)

    async def _follow(self, name: str) -> AsyncIterator[document_pb2.IngestDocumentResponse]:
        """An operation's progress as IngestDocument events, until it ends."""
        user_id = current_user().subject
        state = await self._operations.state(user_id, name, "operation")
        last: tuple[int, int, int] | None = None
        while not state.done:
            seen = (state.stage, state.embedded, state.total)
            if seen != last:
                last = seen
                yield document_pb2.IngestDocumentResponse(
                    stage=_stage(state.stage), embedded_chunks=state.embedded,
                    total_chunks=state.total)
            await asyncio.sleep(POLL_SECONDS)
            state = await self._operations.state(user_id, name, "operation")
        yield await self._ended(state)

    async def _ended(self, state: OperationState) -> document_pb2.IngestDocumentResponse:
        if state.error is not None:
            return document_pb2.IngestDocumentResponse(
                stage=document_pb2.INGEST_STAGE_FAILED, embedded_chunks=state.embedded,
                total_chunks=state.total, error=state.error)
        operation = await self._operations.message(state)
        document = document_pb2.Document()
        operation.response.Unpack(document)
        return document_pb2.IngestDocumentResponse(
            stage=_stage(OPERATION_STAGE_DONE), embedded_chunks=document.chunk_count,
            total_chunks=document.chunk_count, document=document)

    @property
    def _operations(self) -> OperationReader:
        if self._operations_ is None:
            raise Unimplemented("long-running operations are not configured here")
        return self._operations_

    def _sync_upload(self, source: document_pb2.DocumentSource, content: bytes) -> Upload:
        """An upload to ingest within the call: at most the synchronous limit."""
        upload = self._upload(source, content)
        if len(content) > self._sync_max_bytes:
            raise _use_import(self._sync_max_bytes)
        return upload

    def _upload(self, source: document_pb2.DocumentSource, content: bytes) -> Upload:
        collection = check_source(source.filename, source.collection)
        if len(content) > self._max_bytes:
            raise _too_large(self._max_bytes)
        return Upload(filename=source.filename, collection=collection,
                      claimed_type=source.content_type, content=content)


def _invalid(field: str, description: str) -> InvalidArgument:
    return InvalidArgument([FieldViolation(field, description)])


def _too_large(limit: int) -> InvalidArgument:
    return InvalidArgument([FieldViolation("content", f"the file exceeds {limit} bytes")],
                           reason="UPLOAD_TOO_LARGE", metadata={"limit_bytes": str(limit)})


def _stage(value: int) -> document_pb2.IngestStage.ValueType:
    return document_pb2.IngestStage.ValueType(value)


def _use_import(limit: int) -> FailedPrecondition:
    return FailedPrecondition(
        f"files over {limit} bytes are ingested in the background: use ImportDocument "
        "(POST /v1/documents:import), which returns an operation",
        reason="SYNC_UPLOAD_TOO_LARGE", metadata={"limit_bytes": str(limit)})


def _resource(record: DocumentRecord, deduplicated: bool = False) -> document_pb2.Document:
    return document_pb2.Document(
        name=document_name(record.id), collection=record.collection, filename=record.filename,
        content_type=record.content_type, size_bytes=record.size, chunk_count=record.chunks,
        sha256=record.sha256, create_time=timestamp_from_seconds(record.create_time),
        deduplicated=deduplicated)


def _document(done: Progress) -> document_pb2.Document:
    assert done.document is not None
    return _resource(done.document, done.deduplicated)


def _progress(event: Progress) -> document_pb2.IngestDocumentResponse:
    answer = document_pb2.IngestDocumentResponse(stage=_STAGES[event.stage],
                                                 embedded_chunks=event.embedded,
                                                 total_chunks=event.total)
    if event.document is not None:
        answer.document.CopyFrom(_resource(event.document, event.deduplicated))
    return answer


def _failed(error: BaseException) -> document_pb2.IngestDocumentResponse:
    if not isinstance(error, LlmmeshError):
        log.error("ingestion failed", exc_info=error)
        error = Internal("ingestion failed")
    return document_pb2.IngestDocumentResponse(
        stage=document_pb2.INGEST_STAGE_FAILED, error=to_status(error))
