"""The test-only upstream for the edge suite: `edgetest.v1.EdgeTestService`, compiled
from tests/edge/protos at test time and served by a grpc.aio server with generic
handlers over dynamic messages (no generated Python code).

Run it alone: `python -m tests.edge.upstream --port 50070`.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.descriptors import build_pool, message_class
from services.runtime.server import MAX_MESSAGE_BYTES

PROTOS = Path(__file__).resolve().parent / "protos"
SERVICE = "edgetest.v1.EdgeTestService"


def compile_descriptor_set(out: Path) -> descriptor_pb2.FileDescriptorSet:
    """Compile edgetest.proto (with imports) into a FileDescriptorSet at `out`."""
    import google.api.annotations_pb2 as annotations
    import grpc_tools

    googleapis = Path(annotations.__file__).resolve().parents[2]
    well_known = Path(grpc_tools.__file__).resolve().parent / "_proto"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}", f"-I{googleapis}",
         f"-I{well_known}", "--include_imports", f"--descriptor_set_out={out}",
         "edgetest/v1/edgetest.proto"],
        check=True, capture_output=True)
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(out.read_bytes())
    return files


class EdgeTestServicer:
    """Echoes requests; fails, streams and records cancellations on demand."""

    def __init__(self, files: descriptor_pb2.FileDescriptorSet) -> None:
        self.pool = build_pool(files)
        self.types = {name: message_class(self.pool, f"edgetest.v1.{name}") for name in (
            "ThingRequest", "Echo", "FailRequest", "StreamRequest", "StreamEvent",
            "CancelledRequest", "CancelledResponse", "Wrapped", "UploadChunk",
            "UploadSummary")}
        self.http_body = message_class(self.pool, "google.api.HttpBody")
        self.streams: dict[str, asyncio.Event] = {}
        self.cancelled: dict[str, asyncio.Event] = {}
        self.calls: list[str] = []  # every method called, in order

    def _echo(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        echo = self.types["Echo"](method=method)
        echo.request.CopyFrom(request)
        for key, value in context.invocation_metadata() or ():
            if isinstance(value, str):
                echo.metadata[key] = value
        return echo

    async def unary(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Any:
        self.calls.append(method)
        if method == "Fail":
            return await self._fail(request, context)
        if method == "GetRaw":
            await context.send_initial_metadata((("x-test-header", "raw"),))
            return self.http_body(content_type="text/csv", data=b"a,b\n1,2\n")
        if method == "GetInner":
            wrapped = self.types["Wrapped"](method=method)
            wrapped.body.content_type = "application/json"
            wrapped.body.data = f'{{"count": {request.count}}}'.encode()
            return wrapped
        if method == "WasCancelled":
            return self.types["CancelledResponse"](
                started=request.tag in self.streams,
                cancelled=request.tag in self.cancelled and self.cancelled[request.tag].is_set())
        return self._echo(method, request, context)

    async def _fail(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.code == 0:
            return self.types["Echo"](method="Fail")
        code = next(c for c in grpc.StatusCode if c.value[0] == request.code)
        if not request.with_details:
            await context.abort(code, request.message)
        status = status_pb2.Status(code=request.code, message=request.message)
        for detail in (error_details_pb2.ErrorInfo(reason="TEST_FAILURE", domain="edgetest",
                                                   metadata={"k": "v"}),
                       error_details_pb2.BadRequest(field_violations=[
                           error_details_pb2.BadRequest.FieldViolation(
                               field="code", description="asked to fail")])):
            packed = any_pb2.Any()
            packed.Pack(detail)
            status.details.append(packed)
        await context.abort(code, request.message, trailing_metadata=(
            ("grpc-status-details-bin", status.SerializeToString()),))

    async def upload(self, chunks: AsyncIterator[Any],
                     context: grpc.aio.ServicerContext) -> Any:
        self.calls.append("Upload")
        summary = self.types["UploadSummary"]()
        async for chunk in chunks:
            summary.chunks += 1
            summary.bytes += len(chunk.data)
        return summary

    async def stream(self, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        self.calls.append("Stream")
        tag = request.tag
        if tag:
            self.streams[tag] = asyncio.Event()
            self.cancelled[tag] = asyncio.Event()
        try:
            if request.fail_after == -1:
                await context.abort(_code(request.fail_code), "failed before the stream")
            for index in range(request.count):
                if request.fail_after and index == request.fail_after:
                    await context.abort(_code(request.fail_code), "failed mid-stream")
                yield self.types["StreamEvent"](index=index, text=f"event {index}")
                if request.interval_ms:
                    await asyncio.sleep(request.interval_ms / 1000)
        except asyncio.CancelledError:
            if tag:
                self.cancelled[tag].set()
            raise

    def handler(self) -> grpc.GenericRpcHandler:
        types = self.types
        handlers = {}
        unary_methods = {
            "GetThing": "ThingRequest", "ListThings": "ThingRequest",
            "CreateThing": "ThingRequest", "UpdateThing": "ThingRequest",
            "DoThing": "ThingRequest", "DeleteThing": "ThingRequest",
            "GetFile": "ThingRequest", "GetLabel": "ThingRequest", "GetInner": "ThingRequest",
            "GetRaw": "ThingRequest", "GetSecret": "ThingRequest", "Fail": "FailRequest",
            "WasCancelled": "CancelledRequest", "Hidden": "ThingRequest",
            "Limited": "ThingRequest", "GetPrivate": "ThingRequest",
            "GetPrivateIndex": "ThingRequest"}
        for method, request_type in unary_methods.items():
            async def behaviour(request: Any, context: grpc.aio.ServicerContext,
                                method: str = method) -> Any:
                return await self.unary(method, request, context)

            handlers[method] = grpc.unary_unary_rpc_method_handler(
                behaviour, request_deserializer=types[request_type].FromString,
                response_serializer=lambda m: m.SerializeToString())
        handlers["Stream"] = grpc.unary_stream_rpc_method_handler(
            self.stream, request_deserializer=types["StreamRequest"].FromString,
            response_serializer=lambda m: m.SerializeToString())
        handlers["Upload"] = grpc.stream_unary_rpc_method_handler(
            self.upload, request_deserializer=types["UploadChunk"].FromString,
            response_serializer=lambda m: m.SerializeToString())
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


def _code(number: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == number)


async def start_upstream(files: descriptor_pb2.FileDescriptorSet,
                         port: int = 0) -> tuple[grpc.aio.Server, int, EdgeTestServicer]:
    servicer = EdgeTestServicer(files)
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    server.add_generic_rpc_handlers((servicer.handler(),))
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, bound, servicer


async def _serve(port: int, out: Path) -> None:
    files = compile_descriptor_set(out)
    server, bound, _ = await start_upstream(files, port)
    print(f"edgetest upstream on 127.0.0.1:{bound}; descriptor set at {out}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="serve the edge suite's test upstream")
    parser.add_argument("--port", type=int, default=50070)
    parser.add_argument("--descriptor-set", type=Path, default=Path("edgetest.binpb"))
    options = parser.parse_args()
    asyncio.run(_serve(options.port, options.descriptor_set))
