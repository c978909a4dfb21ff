"""Prometheus metrics for gRPC servers: latency, in-flight calls and errors per method.

A service with several worker processes (services/runtime/workers.py) runs them with
prometheus_client's multiprocess mode: each worker writes its values to files in a
directory of the run (PROMETHEUS_MULTIPROC_DIR) and serves no HTTP itself; the supervisor
serves the sum over the workers, dead ones included, so counters never go back, on the
service's metrics port (`serve_aggregate`).
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class ServerMetrics:
    """The metric families one server process exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.handled = Histogram(
            "llmmesh_grpc_server_handling_seconds",
            "Time to complete an RPC, by method and status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "llmmesh_grpc_server_in_flight",
            "RPCs being served now.",
            ["grpc_service", "grpc_method"],
            registry=self.registry,
            multiprocess_mode="livesum",  # summed over the live workers (ignored otherwise)
        )
        self.errors = Counter(
            "llmmesh_grpc_server_errors_total",
            "RPCs that ended with a status other than OK.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=self.registry,
        )

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics over HTTP; returns the bound port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)


class AggregateMetrics:
    """The supervisor's /metrics: every worker's values from `directory`, summed."""

    def __init__(self, directory: Path, host: str, port: int) -> None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._server.server_port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
