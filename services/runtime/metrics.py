"""Prometheus metrics for gRPC servers: latency, in-flight calls and errors per method."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

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
