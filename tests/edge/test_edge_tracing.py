"""Envoy's own spans, as the local run configures them from the standard OTEL_* variables:
a real Envoy exports to an OTLP/gRPC collector (a real gRPC server speaking OpenTelemetry's
TraceService), starts or continues the request's trace, and hands its context to the
service in `traceparent`."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

from gateway.config import otlp_collector
from services.runtime.config import ConfigError, Env
from tests.edge.conftest import Edge, Upstream, start_test_edge

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps every span exported to it, with its resource's service name."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, trace_pb2.Span]] = []

    async def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: grpc.aio.ServicerContext
                     ) -> trace_service_pb2.ExportTraceServiceResponse:
        for resource_spans in request.resource_spans:
            names = [a.value.string_value for a in resource_spans.resource.attributes
                     if a.key == "service.name"]
            for scope in resource_spans.scope_spans:
                self.spans += [(names[0] if names else "", span) for span in scope.spans]
        return trace_service_pb2.ExportTraceServiceResponse()

    def trace(self, trace_id: str) -> list[trace_pb2.Span]:
        return [span for _, span in self.spans if span.trace_id.hex() == trace_id]


@pytest.fixture
async def collector() -> AsyncIterator[tuple[Collector, int]]:
    server = grpc.aio.server()
    kept = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(kept, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield kept, port
    await server.stop(0)


@pytest.fixture
def traced_edge(collector: tuple[Collector, int], auth_address: str, test_upstream: Upstream,
                ratelimit_address: str, tmp_path: Path) -> Iterator[Edge]:
    env = Env({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector[1]}"})
    edge = start_test_edge(tmp_path / "envoy", auth_address, test_upstream.port,
                           int(ratelimit_address.rpartition(":")[2]),
                           otlp_collector=otlp_collector(env))
    yield edge
    edge.envoy.stop()


async def _traceparent(http: aiohttp.ClientSession, url: str,
                       headers: dict[str, str] | None = None) -> tuple[str, str]:
    async with http.get(f"{url}/v1/things/abc", headers=headers or {}) as response:
        assert response.status == 200, await response.text()
        echo = await response.json()
    match = TRACEPARENT.match(echo["metadata"].get("traceparent", ""))
    assert match, echo["metadata"]
    return match.group(1), match.group(2)


async def _spans(collector: Collector, trace_id: str) -> list[trace_pb2.Span]:
    # Envoy flushes its spans every 5 s, or sooner once 5 are buffered.
    for _ in range(150):
        if spans := collector.trace(trace_id):
            return spans
        await asyncio.sleep(0.1)
    raise AssertionError(f"no span of trace {trace_id} reached the collector: "
                         f"{[(n, s.trace_id.hex()) for n, s in collector.spans]}")


async def test_envoy_continues_a_clients_trace_and_hands_it_on(
        traced_edge: Edge, collector: tuple[Collector, int],
        http: aiohttp.ClientSession) -> None:
    kept, _ = collector
    continued, hop = await _traceparent(
        http, traced_edge.url, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    started = [await _traceparent(http, traced_edge.url) for _ in range(5)]

    # The service sees the client's trace, under a span of Envoy's, not the client's.
    assert continued == TRACE_ID and hop != PARENT_ID
    spans = await _spans(kept, TRACE_ID)
    assert {name for name, span in kept.spans if span.trace_id.hex() == TRACE_ID} == {
        "llmmesh-edge"}
    ids = {span.span_id.hex(): span for span in spans}
    assert hop in ids, [s.name for s in spans]  # the upstream span is the service's parent
    # Envoy's request span is the child of the client's span.
    assert any(span.parent_span_id.hex() == PARENT_ID for span in spans), spans
    # Requests without a trace start their own, one each.
    assert len({trace for trace, _ in started}) == 5 and TRACE_ID not in dict(started)
    assert await _spans(kept, started[0][0])


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),  # the local run's default: nothing traced
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, ("127.0.0.1", 4317)),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:14317",
      "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:4317"}, ("collector", 14317)),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ("localhost", 4317)),  # the SDK's default endpoint
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "jaeger"}, ("jaeger", 4317)),
    ({"OTEL_TRACES_EXPORTER": "console"}, None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_SDK_DISABLED": "true"},
     None),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_TRACES_EXPORTER": "none"},
     None),
])
def test_the_edge_traces_where_the_services_do(env: dict[str, str],
                                               expected: tuple[str, int] | None) -> None:
    assert otlp_collector(Env(env)) == expected


@pytest.mark.parametrize("env", [
    {"OTEL_TRACES_EXPORTER": "zipkin"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:notaport"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://:4317"},
])
def test_a_bad_tracing_setting_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        otlp_collector(Env(env))
