"""Builds the document server: Chroma, Redis records, the embedding client, servicers
(DocumentService and google.longrunning.Operations), the orphan janitor (a sweep once
SERVING, then periodically) and the ingestion workers draining the operation queue
(started once SERVING; both stopped on shutdown)."""

from __future__ import annotations

import grpc
from google.longrunning import operations_pb2_grpc, operations_proto_pb2  # type: ignore[import-untyped]
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from services.document.chunk_store import ChunkStore
from services.document.chunking import Chunker
from services.document.config import DocumentConfig
from services.document.ingest_worker import IngestWorkers, WorkerSettings
from services.document.ingestion import Ingestor
from services.document.janitor import JanitorTask, OrphanJanitor
from services.document.library import DocumentLibrary
from services.document.operations import OperationStore
from services.document.operations_servicer import OperationReader, OperationsServicer
from services.document.queue import IngestQueue, stream_key
from services.document.records import DocumentRecords
from services.document.servicer import DocumentServicer
from services.runtime.authn import AccessPolicy
from services.runtime.embedding_client import EmbeddingClient
from services.runtime.jwks_client import remote_jwks_fetcher
from services.runtime.jwt_verify import JwtVerifier
from services.runtime.peers import peer_channel
from services.runtime.redis_client import redis_client
from services.runtime.server import MeshServer, ServiceSpec, build_verifier, run_service

SERVICE = document_pb2.DESCRIPTOR.services_by_name["DocumentService"].full_name
OPERATIONS_SERVICE = operations_proto_pb2.DESCRIPTOR.services_by_name["Operations"].full_name
EMBED_TIMEOUT_SECONDS = 120.0


class DocumentServer(MeshServer):
    """A MeshServer that starts the orphan janitor and the ingestion workers in the
    background once serving."""

    def __init__(self, config: DocumentConfig, spec: ServiceSpec, verifier: JwtVerifier,
                 store: ChunkStore, records: DocumentRecords, janitor: JanitorTask,
                 workers: IngestWorkers, queue: IngestQueue) -> None:
        super().__init__(config.runtime, spec, verifier)
        self.store = store
        self.records = records
        self.janitor = janitor.janitor
        self.workers = workers
        self.queue = queue
        self._janitor_task = janitor

    async def start(self) -> int:
        port = await super().start()
        self._janitor_task.start()
        self.workers.start()
        return port


def create_server(config: DocumentConfig) -> DocumentServer:
    """The document server, unstarted."""
    runtime = config.runtime
    redis = redis_client(runtime.redis_url, socket_timeout=runtime.redis_timeout_seconds)
    store = ChunkStore(config.chroma_path, config.chroma_host)
    records = DocumentRecords(redis)
    token = runtime.service_token.get_secret_value()
    auth_channel = peer_channel(runtime.auth_address, token)
    embedding_channel = peer_channel(config.embedding_address, token,
                                     default_timeout=EMBED_TIMEOUT_SECONDS)
    embed = EmbeddingClient(embedding_channel, config.embedding_model).embed
    ingestor = Ingestor(Chunker(config.chunk_size, config.chunk_overlap), embed, store, records,
                        config.embed_batch_size)
    library = DocumentLibrary(store, records, embed)
    janitor = JanitorTask(OrphanJanitor(store, records, min_age=config.orphan_age_seconds),
                          config.janitor_interval_seconds)
    operations = OperationStore(redis, records, upload_ttl_seconds=config.upload_ttl_seconds,
                                retention_seconds=config.operation_retention_seconds)
    reader = OperationReader(operations, library)
    queue = IngestQueue(redis, stream_key(config.chroma_host or str(config.chroma_path)),
                        claim_idle_seconds=config.claim_idle_seconds)
    workers = IngestWorkers(queue, operations, ingestor, embed, store, WorkerSettings(
        concurrency=config.ingest_concurrency, claim_idle_seconds=config.claim_idle_seconds))

    def register(server: grpc.aio.Server) -> None:
        document_pb2_grpc.add_DocumentServiceServicer_to_server(
            DocumentServicer(ingestor, library, config.max_upload_bytes,
                             sync_max_bytes=config.sync_max_bytes, queue=queue,
                             operations=reader), server)
        operations_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(reader),
                                                             server)

    async def close() -> None:
        await embedding_channel.close()
        await auth_channel.close()
        await redis.aclose()
        store.close()

    spec = ServiceSpec(names=[SERVICE, OPERATIONS_SERVICE], register=register,
                       policy=AccessPolicy.build(), on_stop=[workers.stop, janitor.stop, close])
    return DocumentServer(config, spec, build_verifier(runtime, remote_jwks_fetcher(auth_channel)),
                          store, records, janitor, workers, queue)


def main() -> None:
    """The document service: `python -m services.document`."""
    run_service(DocumentConfig.from_env, create_server)
