"""Tracing's switches (the standard OTEL_* variables), its off state, and the trace ids
in the JSON logs. The trace through the services: tests/chat/test_tracing.py."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.runtime import tracing
from services.runtime.logs import JsonFormatter


@pytest.mark.parametrize(("env", "exporters"), [
    ({}, []),  # the local run: nothing configured, nothing traced
    ({"OTEL_SERVICE_NAME": "chat"}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://jaeger:4317"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://jaeger:4317"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console"}, ["console"]),
    ({"OTEL_TRACES_EXPORTER": "otlp, console"}, ["otlp", "console"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4317"}, []),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
])
def test_the_standard_variables_choose_the_exporters(env: dict[str, str],
                                                     exporters: list[str]) -> None:
    assert tracing.exporters_requested(env) == exporters


def test_an_unknown_exporter_is_refused_at_startup() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        tracing.exporters_requested({"OTEL_TRACES_EXPORTER": "zipkin"})


def test_configure_without_an_exporter_leaves_tracing_off() -> None:
    assert tracing.configure("chat", {}) is False
    assert tracing.tracer() is None


def test_off_spans_are_non_recording_and_inject_nothing() -> None:
    assert tracing.tracer() is None
    with tracing.span("anything", {"a": 1}) as span:
        assert not span.is_recording()
    metadata: list[tuple[str, str]] = []
    tracing.inject_into(metadata)
    assert metadata == []


def _line(message: str) -> dict[str, object]:
    record = logging.makeLogRecord({"name": "llmmesh.rpc", "msg": message,
                                    "levelname": "INFO"})
    entry: dict[str, object] = json.loads(JsonFormatter("chat").format(record))
    return entry


def test_log_lines_name_the_current_trace_and_span(traces: InMemorySpanExporter) -> None:
    assert "trace_id" not in _line("outside")
    with tracing.span("work") as span:
        entry = _line("inside")
        context = span.get_span_context()
    assert entry["trace_id"] == f"{context.trace_id:032x}"
    assert entry["span_id"] == f"{context.span_id:016x}"
    (finished,) = traces.get_finished_spans()
    assert finished.name == "work"


def test_server_errors_follow_the_rpc_conventions(traces: InMemorySpanExporter) -> None:
    tracer = tracing.tracer()
    assert tracer is not None
    for code, server in ((grpc.StatusCode.NOT_FOUND, True), (grpc.StatusCode.INTERNAL, True),
                         (grpc.StatusCode.NOT_FOUND, False)):
        span, token = tracing.start_server_span(tracer, "/a.B/C", {}, "rid")
        token.var.reset(token)
        tracing.end_rpc_span(span, code, server=server)
    statuses = [s.status.status_code.name for s in traces.get_finished_spans()]
    # A server's NOT_FOUND is the caller's problem, not an error; a client's is.
    assert statuses == ["UNSET", "ERROR", "ERROR"]
