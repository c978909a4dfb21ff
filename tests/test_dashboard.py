"""The Grafana dashboard (deploy/grafana/dashboards/llmmesh.json) queries only what the
services export, and compose provisions it over a Prometheus that scrapes them all.

Every PromQL expression in the dashboard is parsed (promql-parser); the metric names and
labels it uses are checked against the /metrics of real services (auth, chat, document,
embedding, the rate limit service) and the /stats/prometheus of a real Envoy, after a few
calls that make the series exist. Label values naming gRPC services, methods and codes
are checked against the protos.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import llmmesh
import promql_parser
import pytest
import yaml
from google.protobuf import descriptor_pb2
from llmmesh.auth.v1 import quota_pb2, quota_pb2_grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from gateway.ratelimit.server import SERVICE as RATELIMIT_SERVICE
from mesh.redis_server import LocalRedis, free_port
from services.chat.config import ChatConfig
from services.chat.server import create_server as create_chat_server
from services.runtime.config import Env
from services.runtime.server import MeshServer
from tests.conftest import SERVICE_METADATA, mesh_env
from tests.edge.conftest import (  # noqa: F401 — fixtures this module uses
    Edge,
    edge_descriptor_set,
    ratelimit_server,
    register,
    start_test_edge,
    test_upstream,
)
from tests.edge.conftest import Upstream as EdgeUpstream
from tests.edge.harness import TIGHT_LIMIT
from tests.helpers import LoggedIn, register_and_login
from tests.test_compose import COMPOSE_FILE, PROMETHEUS_FILE, effective_ports, environment

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_FILE = ROOT / "deploy" / "grafana" / "dashboards" / "llmmesh.json"
PROVISIONING = ROOT / "deploy" / "grafana" / "provisioning"
ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"

# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)$")
MATCH_OPS = [(promql_parser.MatchOp.Equal, "="), (promql_parser.MatchOp.NotEqual, "!="),
             (promql_parser.MatchOp.Re, "=~"), (promql_parser.MatchOp.NotRe, "!~")]

# The dashboard's panels, by title (what issue 13 asks of it).
EXPECTED_PANELS = {
    "Requests per second by RPC", "Errors per second by RPC and status", "Error ratio by RPC",
    "Latency by RPC (p50, p95, p99)", "Streams in flight", "RPCs in flight by service",
    "Chat turns per second", "Tokens per second", "Quota refusals per second",
    "Rate-limit decisions per second",
    "Edge responses by status class", "Rate limit service latency (p50, p99)",
    "Documents ingested per second", "Embedding batches per second",
    "Ingestion time (p50, p95)",
}


# --- reading the dashboard --------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, query) for every Prometheus query: panel targets and template variables."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found.append((f"variable ${variable['name']}", text))
    return found


def substitute(query: str, dashboard: dict[str, Any]) -> str:
    """The query as Prometheus would get it, every template variable at its match-all value."""
    for name, value in GRAFANA_VARIABLES.items():
        query = query.replace(name, value)
    for variable in dashboard.get("templating", {}).get("list", []):
        query = query.replace(f"${variable['name']}", variable.get("allValue") or ".*")
    assert "$" not in query, f"unknown variable in {query!r}"
    return query


@dataclass
class Use:
    """What one query needs: metric names, and labels per metric or per group of metrics."""

    metrics: set[str] = field(default_factory=set)
    # (label, the metrics it must be on at least one of), from matchers, by() and on().
    labels: list[tuple[str, frozenset[str]]] = field(default_factory=list)
    # (metric, label, op, value) for each label matcher.
    matchers: list[tuple[str, str, str, str]] = field(default_factory=list)


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    """Every vector selector under `node`."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    elif isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.Call):
        for arg in node.args:
            yield from selectors(arg)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from selectors(node.expr)
        if node.param is not None:
            yield from selectors(node.param)
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from selectors(node.lhs)
        yield from selectors(node.rhs)
    elif isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr
                    | promql_parser.SubqueryExpr):
        yield from selectors(node.expr)


def children(node: Any) -> list[Any]:
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.ParenExpr | promql_parser.UnaryExpr
                  | promql_parser.SubqueryExpr):
        return [node.expr]
    return []


def analyse(query: str) -> Use:
    """The metrics and labels `query` (PromQL, or Grafana's label_values()) uses."""
    use = Use()
    label_values = LABEL_VALUES.match(query.strip())
    if label_values:
        metric, label = label_values.groups()
        use.metrics.add(metric)
        use.labels.append((label, frozenset({metric})))
        return use
    root = promql_parser.parse(query)
    stack = [root]
    while stack:
        node = stack.pop()
        stack.extend(children(node))
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {query!r}"
            use.metrics.add(node.name)
            for matcher in node.matchers.matchers:
                use.labels.append((matcher.name, frozenset({node.name})))
                op = next(text for kind, text in MATCH_OPS if matcher.op == kind)
                use.matchers.append((node.name, matcher.name, op, matcher.value))
            assert not node.matchers.or_matchers, "or-matchers are not checked"
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            if node.modifier.type == promql_parser.AggModifierType.By:
                under = frozenset(s.name for s in selectors(node.expr) if s.name)
                use.labels.extend((label, under) for label in node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None and matching.type == promql_parser.LabelModifierType.Include:
                for side in (node.lhs, node.rhs):
                    under = frozenset(s.name for s in selectors(side) if s.name)
                    use.labels.extend((label, under) for label in matching.labels)
    return use


def dashboard_uses() -> dict[str, Use]:
    dashboard = load_dashboard()
    return {where: analyse(substitute(query, dashboard)) for where, query in queries(dashboard)}


# --- what the code defines ---------------------------------------------------------------


def grpc_methods() -> dict[str, set[str]]:
    """Full gRPC service name -> its methods: the API's protos and the rate limit service."""
    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(Path(llmmesh.descriptor_set_path()).read_bytes())
    methods = {f"{file.package}.{service.name}": {method.name for method in service.method}
               for file in files.file for service in file.service
               if file.package.startswith("llmmesh.")}
    methods[RATELIMIT_SERVICE] = {"ShouldRateLimit"}
    return methods


def alternatives(op: str, value: str) -> list[str] | None:
    """The literal values an = or =~ matcher names (None: a pattern, not a list)."""
    if op == "=":
        return [value]
    if op == "=~" and re.fullmatch(r"[\w.]+(\|[\w.]+)*", value):
        return value.split("|")
    return None


# --- static checks ----------------------------------------------------------------------


def test_the_dashboard_has_the_panels_and_uses_the_provisioned_datasource() -> None:
    dashboard = load_dashboard()
    titles = {panel["title"] for panel in panels(dashboard) if panel["type"] != "row"}
    assert titles >= EXPECTED_PANELS, f"missing panels: {EXPECTED_PANELS - titles}"
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    datasources = yaml.safe_load(
        (PROVISIONING / "datasources" / "prometheus.yaml").read_text(encoding="utf-8"))
    [prometheus] = datasources["datasources"]
    assert prometheus["type"] == "prometheus"
    assert prometheus["url"] == "http://prometheus:9090", "the compose Prometheus, by name"
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"{panel['title']} queries nothing"
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": prometheus["uid"]}, panel["title"]


def test_every_query_parses_and_rates_only_counters() -> None:
    uses = dashboard_uses()
    assert len(uses) >= len(EXPECTED_PANELS)
    dashboard = load_dashboard()
    for where, query in queries(dashboard):
        text = substitute(query, dashboard)
        for match in re.finditer(r"\b(rate|irate|increase)\(\s*([a-zA-Z_:][\w:]*)", text):
            metric = match.group(2)
            assert metric.endswith(("_total", "_count", "_sum", "_bucket")) or \
                metric.startswith("envoy_"), f"{where}: {match.group(1)}() of a non-counter"
        for match in re.finditer(r"histogram_quantile\(", text):
            assert "_bucket" in text[match.end():], f"{where}: quantile of no histogram"
            assert re.search(r"by \([^)]*\ble\b", text), f"{where}: quantile without by (le)"


def test_label_values_name_real_grpc_services_methods_and_codes() -> None:
    methods = grpc_methods()
    every_method = set().union(*methods.values())
    codes = {code.name for code in grpc.StatusCode}
    edge_prefixes = set(re.findall(r"stat_prefix: (\S+)", ENVOY_YAML.read_text()))
    checked = 0
    for where, use in dashboard_uses().items():
        services = [value for _, label, op, value in use.matchers if label == "grpc_service"
                    for value in (alternatives(op, value) or [])]
        for metric, label, op, value in use.matchers:
            values = alternatives(op, value)
            if values is None:
                continue
            checked += 1
            if label == "grpc_service":
                assert set(values) <= methods.keys(), f"{where}: no gRPC service {values}"
            elif label == "grpc_method":
                known = set().union(*(methods[s] for s in services)) if services else every_method
                assert set(values) <= known, f"{where}: {values} are not methods of {services}"
            elif label == "grpc_code":
                assert set(values) <= codes, f"{where}: {values} are not gRPC codes"
            elif label == "envoy_http_conn_manager_prefix":
                assert set(values) <= edge_prefixes, f"{where}: Envoy has no {values}"
            else:
                pytest.fail(f"{where}: {metric}{{{label}}} value {values} is not checked")
    assert checked >= 10


def test_the_analysis_sees_labels_metrics_and_matchers() -> None:
    use = analyse('histogram_quantile(0.9, sum by (le, a) (rate(m_bucket{b="x", c=~"y|z"}[1m])))'
                  ' / on (d) sum by (d) (n_total)')
    assert use.metrics == {"m_bucket", "n_total"}
    labels = {(label, tuple(sorted(on))) for label, on in use.labels}
    assert labels == {("le", ("m_bucket",)), ("a", ("m_bucket",)), ("b", ("m_bucket",)),
                      ("c", ("m_bucket",)), ("d", ("n_total",)), ("d", ("m_bucket",))}
    assert ("m_bucket", "c", "=~", "y|z") in use.matchers
    assert analyse("label_values(m_count, grpc_service)").labels == [
        ("grpc_service", frozenset({"m_count"}))]
    assert exposition_samples('# TYPE a counter\na{x="1",y="a\\"b,c=\\"d"} 3\nb 1 123\n') == {
        "a": {"x", "y"}, "b": set()}
    assert alternatives("=~", "A|B.C") == ["A", "B.C"] and alternatives("=~", ".*") is None


def test_compose_provisions_grafana_from_the_repository() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    grafana = compose["services"]["grafana"]
    image, _, tag = grafana["image"].rpartition(":")
    assert image == "grafana/grafana" and re.fullmatch(r"\d+\.\d+\.\d+", tag), grafana["image"]
    assert grafana["ports"] == ["127.0.0.1:3000:3000"], "Grafana on the loopback only"
    assert "prometheus" in grafana["depends_on"]
    mounts = {}
    for volume in grafana["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("./"):
            assert mode == ["ro"], f"{volume} is not read-only"
            mounts[target] = (COMPOSE_FILE.parent / source).resolve()
    assert mounts["/etc/grafana/provisioning"] == PROVISIONING
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}",
                        env["GF_SECURITY_ADMIN_PASSWORD"]), "the password comes from the host"
    providers = yaml.safe_load(
        (PROVISIONING / "dashboards" / "llmmesh.yaml").read_text(encoding="utf-8"))
    [provider] = providers["providers"]
    path = provider["options"]["path"]
    assert mounts[path] == DASHBOARD_FILE.parent, "the provider reads the mounted dashboards"
    home = env["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD_FILE.name}"


def test_prometheus_scrapes_exactly_the_compose_metrics_endpoints() -> None:
    """Every target is a compose service on the port it serves metrics on, and every
    service with a metrics port is a target (deploy/prometheus.yml)."""
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {target: job.get("metrics_path", "/metrics") for job in config["scrape_configs"]
               for static in job.get("static_configs", []) for target in static["targets"]}
    expected = {"localhost:9090": "/metrics", "envoy:9902": "/stats/prometheus"}
    for name, spec in compose["services"].items():
        if "build" in spec:
            service = name
            _, metrics_port = effective_ports(service, environment(spec))
            expected[f"{name}:{metrics_port}"] = "/metrics"
    assert targets == expected
    from gateway.deployment import STATS_PORT
    assert STATS_PORT == 9902 and "envoy" in compose["services"]


# --- the real services' metrics ---------------------------------------------------------


SAMPLE_LINE = re.compile(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+\S+(?:\s+\S+)?")
LABEL_PAIR = re.compile(r'([a-zA-Z_]\w*)="(?:[^"\\]|\\.)*"')


def exposition_samples(text: str) -> dict[str, set[str]]:
    """Sample name -> its label names, from Prometheus text exposition, the names exactly
    as Prometheus stores them. (prometheus_client's parser is not used: it renames a
    counter's samples to end in _total, which Envoy's do not.)"""
    exported: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        match = SAMPLE_LINE.fullmatch(line.strip())
        assert match, f"not a sample line: {line!r}"
        labels = {pair.group(1) for pair in LABEL_PAIR.finditer(match.group(2) or "")}
        exported.setdefault(match.group(1), set()).update(labels)
    return exported


def scrape(url: str) -> dict[str, set[str]]:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 — 127.0.0.1
        return exposition_samples(response.read().decode())


@pytest.fixture(scope="module")
async def chat_server(redis_server: LocalRedis, data_dir: Path, auth_address: str,
                      document_address: str, embedding_address: str
                      ) -> AsyncIterator[MeshServer]:
    """Chat with its offline extractive model, serving /metrics on its own port."""
    env = mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address,
                   LLMMESH_DOCUMENT_ADDRESS=document_address,
                   LLMMESH_EMBEDDING_ADDRESS=embedding_address,
                   LLMMESH_CHAT_METRICS_PORT=str(free_port()))
    server = create_chat_server(ChatConfig.from_env(Env(env)))
    await server.start()
    yield server
    await server.stop(0)


def metrics_url(server: MeshServer) -> str:
    """The server's /metrics; the session's servers run without one, so start it."""
    port = server.metrics_port or server.metrics.serve("127.0.0.1", 0)
    return f"http://127.0.0.1:{port}/metrics"


async def drive_the_mesh(user: LoggedIn, quota: quota_pb2_grpc.QuotaServiceStub,
                         document: document_pb2_grpc.DocumentServiceStub,
                         chat: chat_pb2_grpc.ChatServiceStub) -> None:
    """A few calls: an ingested document, a streamed chat turn, a refused reservation."""
    text = ("Grafana shows what the mesh does. " * 40).encode()
    async for _ in document.IngestDocument(document_pb2.IngestDocumentRequest(
            source=document_pb2.DocumentSource(filename="dashboard.txt"), content=text),
            metadata=user.metadata, timeout=60):
        pass
    async for _ in chat.StreamChat(chat_pb2.StreamChatRequest(message="What shows the mesh?"),
                                   metadata=user.metadata, timeout=60):
        pass
    await quota.SetTokenLimit(quota_pb2.SetTokenLimitRequest(
        user_id=user.user_id, monthly_token_limit=1), metadata=SERVICE_METADATA)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await quota.ReserveTokens(quota_pb2.ReserveTokensRequest(
            user_id=user.user_id, tokens=1000), metadata=SERVICE_METADATA)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def drive_the_edge(edge: Edge, *, limited: bool) -> None:
    """Requests through Envoy as a new user: until one is rate limited (`limited`), or a
    few that pass although the rate limit service is down."""
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        user = await register(http, edge.url)
        statuses = []
        for _ in range(2 * TIGHT_LIMIT + 2 if limited else 3):
            async with http.get(f"{edge.url}/v1/secret", headers=user.bearer) as response:
                await response.read()
                statuses.append(response.status)
                if response.status == 429:
                    break
    assert statuses[0] == 200, statuses
    assert (statuses[-1] == 429) == limited, statuses


async def test_every_metric_the_dashboard_queries_is_exported(
        auth_server: MeshServer, auth_stub: Any, quota_stub: quota_pb2_grpc.QuotaServiceStub,
        embedding_server: MeshServer, document_server: MeshServer,
        document_stub: document_pb2_grpc.DocumentServiceStub, chat_server: MeshServer,
        ratelimit_server: MeshServer, test_upstream: EdgeUpstream,  # noqa: F811
        auth_address: str, tmp_path: Path) -> None:
    user = await register_and_login(auth_stub)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{chat_server.port}") as channel:
        await drive_the_mesh(user, quota_stub, document_stub,
                             chat_pb2_grpc.ChatServiceStub(channel))
    # Two Envoys: one with the rate limit service (ok, over_limit), one whose rate limit
    # service is down (error, failure_mode_allowed: the filter fails open).
    edges = [start_test_edge(tmp_path / "edge", auth_address, test_upstream.port,
                             ratelimit_server.port),
             start_test_edge(tmp_path / "edge-no-rls", auth_address, test_upstream.port,
                             free_port())]
    try:
        await drive_the_edge(edges[0], limited=True)
        await drive_the_edge(edges[1], limited=False)
        exported: dict[str, dict[str, set[str]]] = {}
        servers = {"auth": auth_server, "chat": chat_server, "document": document_server,
                   "embedding": embedding_server, "ratelimit": ratelimit_server}
        for name, server in servers.items():
            exported[name] = await asyncio.to_thread(scrape, metrics_url(server))
        for index, edge in enumerate(edges):
            exported[f"envoy{index}"] = await asyncio.to_thread(
                scrape, f"http://127.0.0.1:{edge.admin_port}/stats/prometheus")
    finally:
        for edge in edges:
            edge.envoy.stop()

    # The per-RPC families come from every service.
    for name in servers:
        assert {"llmmesh_grpc_server_handling_seconds_count",
                "llmmesh_grpc_server_in_flight"} <= exported[name].keys(), name
    labels: dict[str, set[str]] = {}
    for samples in exported.values():
        for sample, names in samples.items():
            labels.setdefault(sample, set()).update(names)

    uses = dashboard_uses()
    queried = set().union(*(use.metrics for use in uses.values()))
    missing = sorted(queried - labels.keys())
    assert not missing, f"the dashboard queries metrics no service exports: {missing}"
    for where, use in uses.items():
        for label, metrics in use.labels:
            assert any(label in labels[metric] for metric in metrics), (
                f"{where}: no series of {sorted(metrics)} has the label {label!r}")
    assert any(m.startswith("envoy_cluster_ratelimit_") for m in queried)
