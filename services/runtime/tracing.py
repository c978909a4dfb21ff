"""Distributed traces with OpenTelemetry: one trace per request, from the edge (Envoy's
OpenTelemetry tracer) through every service hop to the model call.

Off unless configured by the standard variables: OTEL_SDK_DISABLED=true turns it off,
OTEL_TRACES_EXPORTER names the exporters (`otlp`, `console`, `none`), and without it an
OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) turns
OTLP/gRPC export on. OTEL_SERVICE_NAME (default llmmesh-<service>),
OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG), OTEL_PROPAGATORS (default W3C
tracecontext + baggage), OTEL_BSP_* and OTEL_EXPORTER_OTLP_* are read by the SDK itself.

While off, `tracer()` is None: the server interceptor (services/runtime/interceptor.py),
the peer channels (services/runtime/peers.py) and the domain spans check that one
global and do nothing else, so the hot path pays one comparison per call. Tests install
a provider of their own (an in-memory exporter) with `use_provider`, since every
in-process service reads the tracer from here at each call.

Spans: a SERVER span per RPC (W3C `traceparent` from the caller, Envoy included), a
CLIENT span per peer call (its `traceparent` sent along), and GenAI-convention spans
for the model call, retrieval, embeddings, and the Chroma query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextvars import Token
from typing import Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import Span, SpanKind, StatusCode, Tracer, TracerProvider
from opentelemetry.util.types import AttributeValue

INVALID_SPAN = trace.INVALID_SPAN

__all__ = ["INVALID_SPAN", "Span", "SpanKind", "configure", "end_rpc_span", "end_when_done",
           "exporters_requested", "inject_into", "model_attributes", "record_usage",
           "shutdown", "span", "start_client_span", "start_server_span", "tracer",
           "use_provider"]

log = logging.getLogger("llmmesh.tracing")

INSTRUMENTATION = "llmmesh"

# GenAI semantic conventions (gen_ai.*), and the database ones for Chroma.
GEN_AI_OPERATION = "gen_ai.operation.name"
GEN_AI_PROVIDER = "gen_ai.provider.name"
GEN_AI_SYSTEM = "gen_ai.system"  # the older name of gen_ai.provider.name; many UIs read it
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
GEN_AI_REQUEST_TEMPERATURE = "gen_ai.request.temperature"
GEN_AI_REQUEST_STREAM = "gen_ai.request.stream"
GEN_AI_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_FINISH_REASONS = "gen_ai.response.finish_reasons"
GEN_AI_DATA_SOURCE = "gen_ai.data_source.id"
GEN_AI_EMBEDDING_DIMENSIONS = "gen_ai.embeddings.dimension.count"
DB_SYSTEM = "db.system.name"
DB_OPERATION = "db.operation.name"
DB_RETURNED_ROWS = "db.response.returned_rows"

# gRPC codes a server span reports as an error (the RPC semantic conventions); a client
# span reports every code but OK.
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS})

_tracer: Tracer | None = None
_owned: Any = None  # the SDK provider configure() made: flushed and shut down at exit
_pending: set[asyncio.Task[None]] = set()  # client spans waiting for their call's status


def tracer() -> Tracer | None:
    """The mesh's tracer, or None while tracing is off."""
    return _tracer


def use_provider(provider: TracerProvider | None) -> None:
    """Trace with `provider` from now on (None: tracing off). For tests and configure()."""
    global _tracer
    _tracer = None if provider is None else provider.get_tracer(INSTRUMENTATION)


def exporters_requested(env: Mapping[str, str]) -> list[str]:
    """The span exporters the OTEL_* variables ask for; [] when tracing is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if not named:  # unset: on only where an OTLP endpoint is configured
        endpoint = (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                    or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        return ["otlp"] if endpoint else []
    chosen = [name.strip() for name in named.split(",") if name.strip()]
    if "none" in chosen:
        return []
    unknown = sorted(set(chosen) - {"otlp", "console"})
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unsupported exporter(s) {unknown} "
                         "(use otlp, console or none)")
    return chosen


def configure(service: str, env: Mapping[str, str] = os.environ) -> bool:
    """Install an SDK tracer provider exporting as the OTEL_* variables say; False (and
    tracing off) when they configure no exporter. Call once per process."""
    exporters = exporters_requested(env)
    if not exporters:
        return False
    # Imported here: a process without tracing never loads the SDK or the exporter.
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import (
        BatchSpanProcessor,
        ConsoleSpanExporter,
        SpanExporter,
    )

    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: f"llmmesh-{service}"}
    provider = SdkTracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter,
            )
            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # for any library that traces on the global one
    global _owned
    _owned = provider
    use_provider(provider)
    log.info("tracing on", extra={"exporters": exporters})
    return True


def shutdown() -> None:
    """Export what is still buffered and stop the provider configure() installed."""
    global _owned
    provider, _owned = _owned, None
    use_provider(None)
    if provider is not None:
        provider.shutdown()


# --- RPC spans ---------------------------------------------------------------------


def _rpc_attributes(method: str) -> dict[str, AttributeValue]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def start_server_span(active: Tracer, method: str, metadata: Mapping[str, Sequence[str]],
                      request_id: str) -> tuple[Span, Token[otel_context.Context]]:
    """The SERVER span of an RPC, continuing the caller's trace (its `traceparent`),
    made current; the token restores the context before it."""
    parent = propagate.extract(metadata)
    attributes = _rpc_attributes(method)
    attributes["llmmesh.request_id"] = request_id
    span = active.start_span(method.lstrip("/"), context=parent, kind=SpanKind.SERVER,
                             attributes=attributes)
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def end_rpc_span(span: Span, code: grpc.StatusCode, *, server: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code is not grpc.StatusCode.OK and (not server or code in _SERVER_ERRORS):
        span.set_status(StatusCode.ERROR, code.name)
    span.end()


class _MetadataSetter(Setter[grpc.aio.Metadata]):
    def set(self, carrier: grpc.aio.Metadata, key: str, value: str) -> None:
        carrier[key] = value  # replaces a value already there


class _PairsSetter(Setter[list[tuple[str, str]]]):
    def set(self, carrier: list[tuple[str, str]], key: str, value: str) -> None:
        carrier.append((key, value))


_METADATA_SETTER = _MetadataSetter()
_PAIRS_SETTER = _PairsSetter()


def start_client_span(active: Tracer, method: str | bytes,
                      metadata: grpc.aio.Metadata) -> Span:
    """The CLIENT span of a peer call, a child of the current span; its context goes
    into `metadata` (W3C traceparent) so the peer's server span is its child."""
    name = method.decode() if isinstance(method, bytes) else method
    span = active.start_span(name.lstrip("/"), kind=SpanKind.CLIENT,
                             attributes=_rpc_attributes(name))
    propagate.inject(metadata, context=trace.set_span_in_context(span),
                     setter=_METADATA_SETTER)
    return span


def end_when_done(span: Span, call: Any) -> None:
    """End a client span when its call (a grpc.aio call) ends, with its status."""

    def done(finished: Any) -> None:
        task = asyncio.get_running_loop().create_task(_end_client(span, finished))
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    call.add_done_callback(done)


async def _end_client(span: Span, call: Any) -> None:
    try:
        code = await call.code()
    except Exception:  # noqa: BLE001 — never let a span break anything
        code = grpc.StatusCode.UNKNOWN
    end_rpc_span(span, code, server=False)


def inject_into(metadata: list[tuple[str, str]]) -> None:
    """Add the current trace context to a plain channel's call metadata (no client span:
    the peer's server span becomes a child of the current span). Nothing while off."""
    if _tracer is not None:
        propagate.inject(metadata, setter=_PAIRS_SETTER)


# --- domain spans ------------------------------------------------------------------


@contextlib.contextmanager
def span(name: str, attributes: Mapping[str, AttributeValue] | None = None, *,
         kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Span]:
    """A current span around a block (a non-recording one while tracing is off);
    an exception escaping the block marks it an error."""
    active = _tracer
    if active is None:
        yield INVALID_SPAN
        return
    with active.start_as_current_span(name, kind=kind, attributes=attributes) as current:
        yield current


def model_attributes(operation: str, provider: str, model: str
                     ) -> dict[str, AttributeValue]:
    """The GenAI attributes every model span carries."""
    return {GEN_AI_OPERATION: operation, GEN_AI_PROVIDER: provider, GEN_AI_SYSTEM: provider,
            GEN_AI_REQUEST_MODEL: model}


def record_usage(current: Span, input_tokens: int, output_tokens: int | None = None,
                 finish_reasons: Sequence[str] = ()) -> None:
    """A model span's usage and finish reasons (GenAI conventions)."""
    if not current.is_recording():
        return
    current.set_attribute(GEN_AI_INPUT_TOKENS, input_tokens)
    if output_tokens is not None:
        current.set_attribute(GEN_AI_OUTPUT_TOKENS, output_tokens)
    if finish_reasons:
        current.set_attribute(GEN_AI_FINISH_REASONS, list(finish_reasons))
