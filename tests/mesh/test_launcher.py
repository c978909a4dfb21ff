"""The README's run command, minus the install: the launcher starts Redis and every
service as a process, they answer over real sockets, and Ctrl-C stops everything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from mesh.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def mesh(tmp_path: Path):  # type: ignore[no-untyped-def]
    ports = {name: free_port() for name in ("auth", "chat", "document", "embedding")}
    env = {**os.environ, "LLMMESH_DATA_DIR": str(tmp_path / "data"),
           "LLMMESH_REDIS_PORT": str(free_port()), "LLMMESH_AUTH_BCRYPT_COST": "4"}
    for name, port in ports.items():
        env[f"LLMMESH_{name.upper()}_PORT"] = str(port)
        env[f"LLMMESH_{name.upper()}_METRICS_PORT"] = str(free_port())
    ports["edge"] = free_port()
    env.update(LLMMESH_EDGE_PORT=str(ports["edge"]), LLMMESH_EDGE_ADMIN_PORT=str(free_port()),
               LLMMESH_RATELIMIT_PORT=str(free_port()),
               LLMMESH_RATELIMIT_METRICS_PORT=str(free_port()))
    env.pop("LLMMESH_REDIS_URL", None)
    process = subprocess.Popen([sys.executable, "-m", "mesh"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    banner: list[str] = []
    deadline = time.monotonic() + 90
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        banner.append(line)
        if "Press Ctrl-C" in line:
            break
    try:
        assert banner and "Press Ctrl-C" in banner[-1], "".join(banner)
        yield process, ports, "".join(banner)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_the_mesh_runs_answers_and_stops_cleanly(mesh) -> None:  # type: ignore[no-untyped-def]
    process, ports, banner = mesh
    for name, port in ports.items():
        assert f"127.0.0.1:{port}" in banner, name
        if name == "edge":
            continue
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING

    with grpc.insecure_channel(f"127.0.0.1:{ports['auth']}") as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        auth.CreateUser(auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username="meshuser", email="mesh@example.com"),
            password="mesh password"), timeout=10)
        tokens = auth.Login(auth_pb2.LoginRequest(username="meshuser",
                                                  password="mesh password"), timeout=10).tokens
    # Another process verifies the token with the JWKS it fetched from auth.
    with grpc.insecure_channel(f"127.0.0.1:{ports['document']}") as channel:
        documents = document_pb2_grpc.DocumentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as anonymous:
            documents.ListDocuments(document_pb2.ListDocumentsRequest(), timeout=10)
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
        bearer = (("authorization", f"Bearer {tokens.access_token}"),)
        # Document → embedding (the local model) → Chroma, across three processes.
        created = documents.CreateDocument(document_pb2.CreateDocumentRequest(
            source=document_pb2.DocumentSource(filename="mesh.txt"),
            content=b"The mesh test ferry leaves the harbour at seven."), timeout=60,
            metadata=bearer)
        found = documents.SearchDocuments(document_pb2.SearchDocumentsRequest(
            query="when does the ferry leave?", k=1), timeout=30, metadata=bearer)
        assert found.results[0].document == created.name

    # REST through Envoy: JSON in, the server stream as Server-Sent Events out.
    edge = f"http://127.0.0.1:{ports['edge']}"
    status, body, headers = _http("POST", f"{edge}/v1/auth:login",
                                  {"username": "meshuser", "password": "mesh password"},
                                  with_headers=True)
    assert status == 200 and body["tokens"]["tokenType"] == "Bearer"
    assert headers["server"] == "envoy"
    # gRPC through the same port.
    with grpc.insecure_channel(f"127.0.0.1:{ports['edge']}") as channel:
        me = auth_pb2_grpc.AuthServiceStub(channel).GetUser(
            auth_pb2.GetUserRequest(name="users/me"), timeout=10,
            metadata=(("authorization", f"Bearer {body['tokens']['accessToken']}"),))
        assert me.username == "meshuser"
    status, events = _http("POST", f"{edge}/v1/conversations:streamChat",
                           {"message": "When does the ferry leave?", "options": {"useRag": True}},
                           token=body["tokens"]["accessToken"], sse=True)
    assert status == 200
    kinds = [next(iter(event)) for event in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and "sources" in kinds
    answer = "".join(e["delta"]["text"] for e in events if "delta" in e)
    assert "seven" in answer  # the extractive model quoted the ingested document
    status, _ = _http("GET", f"{edge}/v1/users/me")
    assert status == 401

    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True,
                              text=True, check=False).stdout.split()
    assert len(children) >= 7  # redis, four services, the rate limit service, the edge
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    assert "stopped." in output
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{pid} survived"


def _http(method: str, url: str, body: dict | None = None, token: str = "",
          sse: bool = False, with_headers: bool = False) -> Any:
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, method=method, data=data)  # noqa: S310 — loopback
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:  # noqa: S310
            text = answer.read().decode()
            status = answer.status
            headers = dict(answer.headers.items())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    if with_headers:
        return status, json.loads(text), {k.lower(): v for k, v in headers.items()}
    if sse:
        return status, [json.loads(line.removeprefix("data: "))
                        for line in text.splitlines() if line.startswith("data: ")]
    return status, json.loads(text)


def _is_zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True
