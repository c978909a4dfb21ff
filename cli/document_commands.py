"""`llmmesh ingest PATH...` (each file an ImportDocument operation, with a progress bar
drawn from it) and `llmmesh search QUERY`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TextIO

import grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from cli.session import Endpoints, Session

BAR_WIDTH = 30
UPLOAD_TIMEOUT_SECONDS = 120  # the upload only: ingestion runs as an operation
FOLLOW_ATTEMPTS = 5


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ingest = commands.add_parser("ingest", help="upload files (PDF, text, Markdown)")
    ingest.add_argument("paths", nargs="+", type=Path)
    ingest.add_argument("--collection", default="", help="collection to store them in")
    search = commands.add_parser("search", help="search your documents")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="number of results (1-50)")
    search.add_argument("--collection", default="")


def progress_bar(filename: str, done: int, total: int, stage: str) -> str:
    filled = BAR_WIDTH * done // total if total else 0
    return f"\r{filename[:28]:<28} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] " \
           f"{done:>5}/{total:<5} {stage:<9}"


async def ingest(stub: document_pb2_grpc.DocumentServiceAsyncStub, path: Path, collection: str,
                 metadata: tuple[tuple[str, str], ...], out: TextIO) -> bool:
    """Upload one file as an ImportDocument operation and draw its progress, followed
    with IngestDocument; True when it landed. The upload returns at once; a follow that
    breaks (a server restart) is resumed, the operation keeps running meanwhile."""
    request = document_pb2.ImportDocumentRequest(
        source=document_pb2.DocumentSource(filename=path.name, collection=collection),
        content=await asyncio.to_thread(path.read_bytes))
    try:
        operation = await stub.ImportDocument(request, metadata=metadata,
                                              timeout=UPLOAD_TIMEOUT_SECONDS)
    except grpc.aio.AioRpcError as error:
        out.write(f"\r{path.name}: {error.details()}\n")
        return False
    total = 0
    for attempt in range(FOLLOW_ATTEMPTS):
        try:
            async for event in stub.IngestDocument(
                    document_pb2.IngestDocumentRequest(operation=operation.name),
                    metadata=metadata, wait_for_ready=True):
                total = event.total_chunks or total
                if event.stage == document_pb2.INGEST_STAGE_FAILED:
                    out.write(progress_bar(path.name, event.embedded_chunks, total, "failed"))
                    out.write(f"\n  error: {event.error.message}\n")
                    return False
                stage = document_pb2.IngestStage.Name(event.stage).removeprefix(
                    "INGEST_STAGE_")
                out.write(progress_bar(path.name, event.embedded_chunks, total, stage.lower()))
                if event.stage == document_pb2.INGEST_STAGE_DONE:
                    note = " (already stored)" if event.document.deduplicated else ""
                    out.write(f"\n  {event.document.name}: {event.document.chunk_count} "
                              f"chunks{note}\n")
                    return True
                out.flush()
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.UNAVAILABLE or attempt + 1 == FOLLOW_ATTEMPTS:
                out.write(f"\r{path.name}: {error.details()} ({operation.name})\n")
                return False
    return False


async def run(args: argparse.Namespace, endpoints: Endpoints, session: Session) -> int:
    metadata = await session.metadata()
    async with grpc.aio.insecure_channel(endpoints.document) as channel:
        stub = document_pb2_grpc.DocumentServiceStub(channel)
        if args.command == "ingest":
            landed = 0
            for path in args.paths:
                if not path.is_file():
                    print(f"{path}: not a file", file=sys.stderr)
                    continue
                landed += await ingest(stub, path, args.collection, metadata, sys.stderr)
            print(f"{landed} of {len(args.paths)} files ingested")
            return 0 if landed == len(args.paths) else 1
        found = await stub.SearchDocuments(document_pb2.SearchDocumentsRequest(
            query=args.query, k=args.k, collection=args.collection), metadata=metadata,
            timeout=30)
        if not found.results:
            print("no results")
        for rank, result in enumerate(found.results, start=1):
            snippet = " ".join(result.text.split())[:160]
            print(f"{rank}. {result.score:.3f}  {result.filename} #{result.chunk_index}  "
                  f"({result.document})\n   {snippet}")
    return 0
