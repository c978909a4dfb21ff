"""The README's run command, minus the install: the launcher starts Redis and every
service as a process, they answer over real sockets, a child that dies comes back on its
port, one that keeps dying stops the mesh, and Ctrl-C stops everything in dependency
order."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmmesh.document.v1 import document_pb2, document_pb2_grpc

from mesh.launcher import STOP_ORDER, stop_groups
from mesh.redis_server import free_port
from tests.helpers import stop_process

ROOT = Path(__file__).resolve().parents[2]


class Launcher:
    """`python -m mesh` as a subprocess; its output collected line by line."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ()) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "mesh", *args], cwd=ROOT,
                                        env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # end of output
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def expect(self, text: str, timeout: float, after: int = 0) -> int:
        """Index of the first line from `after` on containing `text`."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(after, len(self.lines)):
                    if text in self.lines[index]:
                        return index
                left = deadline - time.monotonic()
                if left <= 0 or (self.lines and self.lines[-1] == "" and
                                 self.process.poll() is not None):
                    raise AssertionError(f"no {text!r} in:\n{self.output}")
                self._changed.wait(left)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGINT, self._reader)


def start_mesh(data_dir: Path, args: tuple[str, ...] = (),
               **settings: str) -> tuple[Launcher, dict[str, int]]:
    """`python -m mesh` (with `args`) on free ports, once it printed its banner."""
    ports = {name: free_port() for name in ("auth", "chat", "document", "embedding")}
    env = {**os.environ, "LLMMESH_DATA_DIR": str(data_dir),
           "LLMMESH_REDIS_PORT": str(free_port()), "LLMMESH_AUTH_BCRYPT_COST": "4"}
    for name, port in ports.items():
        env[f"LLMMESH_{name.upper()}_PORT"] = str(port)
        env[f"LLMMESH_{name.upper()}_METRICS_PORT"] = str(free_port())
    ports["edge"] = free_port()
    ports["redis"] = int(env["LLMMESH_REDIS_PORT"])
    env.update(LLMMESH_EDGE_PORT=str(ports["edge"]), LLMMESH_EDGE_ADMIN_PORT=str(free_port()),
               LLMMESH_RATELIMIT_PORT=str(free_port()),
               LLMMESH_RATELIMIT_METRICS_PORT=str(free_port()))
    env.update(settings)
    env.pop("LLMMESH_REDIS_URL", None)
    launcher = Launcher(env, args)
    try:
        launcher.expect("Press Ctrl-C", 90)
    except BaseException:
        launcher.stop()
        raise
    return launcher, ports


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """One mesh for the module's tests, which run in order: the last one stops it."""
    launcher, ports = start_mesh(tmp_path_factory.mktemp("mesh") / "data",
                                  LLMMESH_RESTART_BACKOFF_SECONDS="0.1",
                                  LLMMESH_CHAT_WORKERS="2", LLMMESH_EMBEDDING_WORKERS="1")
    try:
        yield launcher, ports
    finally:
        launcher.stop()


def test_the_mesh_runs_and_answers(mesh) -> None:  # type: ignore[no-untyped-def]
    launcher, ports = mesh
    banner = launcher.output
    for name, port in ports.items():
        assert f"127.0.0.1:{port}" in banner, name
        if name in {"edge", "redis"}:
            continue
        _assert_serving(port)
    # Chat: a supervisor and its two workers on one port, both up before the banner
    # (health SERVING waits for every worker); the others one process each.
    workers = {line.split()[0]: line.split()[3] for line in launcher.lines
               if line.split()[:1] in (["auth"], ["chat"], ["document"], ["embedding"])}
    assert workers == {"auth": "1", "chat": "2", "document": "1", "embedding": "1"}, banner
    chat = _child_pid(launcher.process.pid, "services.chat")
    assert len(_children(chat)) == 2
    assert _children(_child_pid(launcher.process.pid, "services.auth")) == []

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
    status, body, headers = _login(edge, with_headers=True)
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


def test_a_killed_child_is_restarted_on_its_port(mesh) -> None:  # type: ignore[no-untyped-def]
    launcher, ports = mesh
    # Redis (replaying its AOF), a service and the edge, each SIGKILLed in turn.
    # (Redis retitles itself "redis-server 127.0.0.1:<port>".)
    for name, marker in (("redis", f"127.0.0.1:{ports['redis']}"), ("auth", "services.auth"),
                         ("edge", "--admin-address-path")):
        pid = _child_pid(launcher.process.pid, marker)
        mark = len(launcher.lines)
        os.kill(pid, signal.SIGKILL)
        said = launcher.lines[launcher.expect(f"{name} exited with code -9", 10, mark)]
        assert ("attempt 1" in said and f"{name}.log" in said) or name == "redis", said
        launcher.expect(f"{name} is back on 127.0.0.1:{ports[name]}", 60, mark)
        assert _child_pid(launcher.process.pid, marker) != pid
    _assert_serving(ports["auth"])
    # The peers reconnected: Envoy → the new auth → the new Redis, the user still there.
    status, body = _login(f"http://127.0.0.1:{ports['edge']}")
    assert status == 200, body
    assert launcher.process.poll() is None


def test_ctrl_c_stops_in_dependency_order(mesh) -> None:  # type: ignore[no-untyped-def]
    launcher, _ = mesh
    children = _children(launcher.process.pid)
    assert len(children) >= 7  # redis, four services, the rate limit service, the edge
    chat_workers = _children(_child_pid(launcher.process.pid, "services.chat"))
    assert len(chat_workers) == 2
    children += chat_workers  # stopped by chat's supervisor, before it exits
    mark = len(launcher.lines)
    launcher.process.send_signal(signal.SIGINT)
    assert launcher.process.wait(60) == 0, launcher.output
    launcher.expect("stopped.", 5, mark)
    events = [line.removeprefix("llmmesh: ").split()[:2] for line in launcher.lines[mark:]
              if line.startswith(("llmmesh: stopping ", "llmmesh: stopped "))]
    assert _groups(events) == [{"edge"}, {"chat"}, {"document", "embedding"},
                               {"ratelimit", "auth"}, {"redis"}], launcher.output
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{pid} survived"


def test_a_child_that_keeps_crashing_stops_the_mesh(tmp_path: Path) -> None:
    # The defaults are 5 crashes within 60 s, 0.5 s doubling: fewer here. Chat runs its
    # default worker count (one per CPU): killing its supervisor stops its workers too
    # (their link to it closes), which let go of the port at once, before draining.
    launcher, ports = start_mesh(tmp_path / "data", LLMMESH_RESTART_BACKOFF_SECONDS="1",
                                 LLMMESH_RESTART_LIMIT="3")
    try:
        # Chat dies, and its port is taken before the launcher restarts it: every restart
        # exits at once ("could not bind").
        chat = _child_pid(launcher.process.pid, "services.chat")
        workers = _children(chat)
        os.kill(chat, signal.SIGKILL)
        with _hold_port(ports["chat"], within=0.8):
            assert launcher.process.wait(60) == 1, launcher.output
    finally:
        launcher.stop()
    output = launcher.output
    assert "chat exited with code -9" in output, output
    assert "restarting in 1 s (attempt 1)" in output
    assert "chat exited with code 1" in output and "restarting in 2 s (attempt 2)" in output
    for pid in workers:  # no worker outlived its supervisor
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid), f"{pid} survived"
    assert "giving up on chat: it exited 3 times within 60 s" in output, output
    assert "chat.log" in output and "llmmesh stopped: chat kept crashing" in output
    events = [line.removeprefix("llmmesh: ").split()[:2] for line in launcher.lines
              if line.startswith(("llmmesh: stopping ", "llmmesh: stopped "))]
    assert _groups(events) == [{"edge"}, {"document", "embedding"}, {"ratelimit", "auth"},
                               {"redis"}], output


@contextlib.contextmanager
def _hold_port(port: int, within: float) -> Iterator[None]:
    """Listen on `port` as soon as its owner let go (it must within `within` s)."""
    deadline = time.monotonic() + within
    with socket.socket() as holder:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        while True:
            try:
                holder.bind(("127.0.0.1", port))
                break
            except OSError:
                assert time.monotonic() < deadline, f"port {port} still taken"
                time.sleep(0.005)  # the kernel closes a SIGKILLed process's sockets
        holder.listen()
        yield


def test_stop_groups_follow_the_dependencies() -> None:
    started = ["redis", "auth", "embedding", "document", "chat", "ratelimit", "edge"]
    assert stop_groups(started) == [list(group) for group in STOP_ORDER]
    assert stop_groups(["redis", "auth", "extra", "edge"]) == [
        ["extra"], ["edge"], ["auth"], ["redis"]]


def _groups(events: list[list[str]]) -> list[set[str]]:
    """The stop groups as the log shows them; each group must be all stopped before the
    next one is signalled."""
    groups: list[set[str]] = []
    pending: set[str] = set()
    for verb, name in events:
        if verb == "stopping":
            if not pending:
                groups.append(set())
            groups[-1].add(name)
            pending.add(name)
        else:
            pending.discard(name)
    assert not pending
    return groups


def _assert_serving(port: int) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def _children(parent: int) -> list[str]:
    return subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True,
                          check=False).stdout.split()


def _child_pid(parent: int, marker: str) -> int:
    for pid in subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True,
                              check=False).stdout.split():
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(marker.encode() in arg for arg in argv) and not _is_zombie(pid):
            return int(pid)
    raise AssertionError(f"no child of {parent} runs {marker}")


def _login(edge: str, with_headers: bool = False) -> Any:
    return _http("POST", f"{edge}/v1/auth:login",
                 {"username": "meshuser", "password": "mesh password"},
                 with_headers=with_headers)


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
