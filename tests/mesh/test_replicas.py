"""Replicas behind Envoy: `python -m mesh --replicas auth=2,chat=2,ratelimit=2` runs two
processes of each (each its own process group, port and metrics port), Envoy balances
over them with active gRPC health checks, and chat reaches auth's replicas through an
`ipv4:` list. One mesh for the module (a fake OpenAI-compatible model for chat), its
tests in order:

- limits hold exactly across replicas: a burst against a small rate limit, counted by
  two rate limit service replicas, lets exactly the limit through; concurrent chat turns
  through both chat replicas (holding quota through both auth replicas) never take the
  monthly quota past its limit, and the ledger is exactly what the answered turns used;
- a replica of auth and one of chat SIGKILLed (their whole process groups) under load:
  the calls they held fail with UNAVAILABLE, none hangs, the others succeed, everything
  acknowledged is there afterwards, and the launcher brings both replicas back;
- a chat replica SIGTERMed while it serves a stream: Envoy's health check takes it out
  of rotation, every new call in the meantime succeeds on the other replica, and the
  stream it was serving finishes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from mesh.launcher import Mesh, parse_replicas, replica_ports
from mesh.redis_server import free_port
from services.runtime.config import ConfigError, Env
from tests.chat.openai_server import OpenAIServer, Script
from tests.faults.processes import model_entry
from tests.helpers import clear_of_window_edge_sync
from tests.mesh.test_launcher import Launcher, start_mesh

pytestmark = pytest.mark.timeout(120)

PASSWORD = "replica password"
RATE_LIMIT = 8  # the default route class (GetUser), per user and hour
MONTHLY_TOKENS = 300
T = TypeVar("T")


@dataclass
class ReplicaMesh:
    launcher: Launcher
    ports: dict[str, int]
    admin: int
    model: OpenAIServer
    model_loop: asyncio.AbstractEventLoop
    data_dir: Path
    channels: list[grpc.Channel] = field(default_factory=list)

    def channel(self, port: int | None = None) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{port or self.ports['edge']}")
        self.channels.append(channel)
        return channel

    def hosts(self, cluster: str) -> dict[int, dict[str, str]]:
        """Envoy's view of each endpoint of `cluster`, by port: rq_total, health_flags..."""
        url = f"http://127.0.0.1:{self.admin}/clusters"
        with urllib.request.urlopen(url, timeout=5) as answer:
            text = answer.read().decode()
        hosts: dict[int, dict[str, str]] = {}
        for line in text.splitlines():
            parts = line.split("::")
            if len(parts) == 4 and parts[0] == cluster and \
                    parts[1].rpartition(":")[2].isdigit():
                hosts.setdefault(int(parts[1].rpartition(":")[2]), {})[parts[2]] = parts[3]
        return hosts

    def served(self, cluster: str) -> dict[int, int]:
        return {port: int(stats["rq_total"]) for port, stats in self.hosts(cluster).items()}


def _chat_calls(mesh: ReplicaMesh, replica: str) -> int:
    """Chat calls a chat replica has finished, from its own log (one line per RPC)."""
    log = (mesh.data_dir / "logs" / f"{replica}.log").read_text(errors="replace")
    return log.count('"method": "/llmmesh.chat.v1.ChatService/Chat"')


def _rules(path: Path) -> Path:
    """Generous limits but a small one for the default route class (GetUser), per hour
    so that no window boundary falls inside the test."""
    big = {"unit": "minute", "requests_per_unit": 100_000}
    classes = {"account": "remote_address", "jwks": "remote_address", "chat": "user",
               "ingest": "user", "search": "user"}
    descriptors: list[dict[str, Any]] = [
        {"key": "route_class", "value": name, "descriptors": [{"key": key, "rate_limit": big}]}
        for name, key in classes.items()]
    descriptors.append({"key": "route_class", "value": "default", "descriptors": [
        {"key": "user", "rate_limit": {"unit": "hour", "requests_per_unit": RATE_LIMIT}}]})
    descriptors.append({"key": "user", "rate_limit": big})
    path.write_text(yaml.safe_dump({"domain": "llmmesh", "descriptors": descriptors}))
    return path


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReplicaMesh]:
    root = tmp_path_factory.mktemp("replicas")
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    model = OpenAIServer(script=Script(), record=False)
    asyncio.run_coroutine_threadsafe(model.start(), loop).result(10)
    admin = free_port()
    settings = {
        "LLMMESH_CHAT_MODELS": json.dumps([model_entry(model.base_url, 256)]),
        "LLMMESH_RATELIMIT_CONFIG": str(_rules(root / "ratelimit.yaml")),
        "LLMMESH_AUTH_DEFAULT_MONTHLY_TOKEN_LIMIT": str(MONTHLY_TOKENS),
        "LLMMESH_EDGE_ADMIN_PORT": str(admin),
        "LLMMESH_RESTART_BACKOFF_SECONDS": "0.2",
        "LLMMESH_SHUTDOWN_GRACE_SECONDS": "10",
        # One process per replica: a SIGKILL hits the process serving the calls.
        "LLMMESH_AUTH_WORKERS": "1", "LLMMESH_CHAT_WORKERS": "1",
        "LLMMESH_EMBEDDING_WORKERS": "1"}
    for service in ("auth", "chat", "ratelimit"):
        settings[f"LLMMESH_{service.upper()}_REPLICA_PORTS"] = str(free_port())
        settings[f"LLMMESH_{service.upper()}_REPLICA_METRICS_PORTS"] = str(free_port())
    launcher, ports = start_mesh(root / "data", ("--replicas", "auth=2,chat=2,ratelimit=2"),
                                 **settings)
    for service in ("auth", "chat"):
        ports[f"{service}-2"] = int(settings[f"LLMMESH_{service.upper()}_REPLICA_PORTS"])
    replica_mesh = ReplicaMesh(launcher, ports, admin, model, loop, root / "data")
    try:
        yield replica_mesh
    finally:
        for channel in replica_mesh.channels:
            channel.close()
        launcher.stop()
        asyncio.run_coroutine_threadsafe(model.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def _user(mesh: ReplicaMesh, name: str) -> tuple[tuple[str, str], ...]:
    """A new user, logged in through the edge: its call metadata."""
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel())
    auth.CreateUser(auth_pb2.CreateUserRequest(
        user=auth_pb2.User(username=name, email=f"{name}@example.com"), password=PASSWORD),
        timeout=10)
    tokens = auth.Login(auth_pb2.LoginRequest(username=name, password=PASSWORD),
                        timeout=10).tokens
    return (("authorization", f"Bearer {tokens.access_token}"),)


def _outcome(call: Callable[[], T]) -> T | grpc.StatusCode:
    try:
        return call()
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]


def _concurrently(calls: list[Callable[[], T]]) -> list[T | grpc.StatusCode]:
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(_outcome, calls))


def _replica_pid(mesh: ReplicaMesh, service: str, port: int) -> int:
    """The launcher's child running `service` on `port` (from its environment)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if int(Path(f"/proc/{pid}/stat").read_text().split(") ")[1].split()[1]) != \
                    mesh.launcher.process.pid:
                continue
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        if f"services.{service}".encode() in argv and \
                f"LLMMESH_{service.upper()}_PORT={port}".encode() in environ:
            return int(pid)
    raise AssertionError(f"no {service} replica on {port}")


def _healthy(mesh: ReplicaMesh, cluster: str, port: int) -> bool:
    return mesh.hosts(cluster)[port]["health_flags"] == "healthy"


def _wait(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_replicas_are_parsed_and_placed() -> None:
    assert parse_replicas("chat=2, auth=3,", "--replicas") == {"chat": 2, "auth": 3}
    for bad in ("chat", "chat=0", "chat=17", "redis=2", "chat=two"):
        with pytest.raises(ConfigError):
            parse_replicas(bad, "--replicas")
    env = Env({"LLMMESH_REPLICAS": "chat=3,auth=2"})
    mesh = Mesh({"LLMMESH_REPLICAS": "chat=3,auth=2", "LLMMESH_DATA_DIR": "/tmp/unused"},
                replicas="chat=2")
    assert mesh.replicas["chat"] == 2 and mesh.replicas["auth"] == 2  # the flag wins
    assert replica_ports(env, "chat", 50052, 9102, 3) == [
        (50052, 9102), (50152, 9202), (50252, 9302)]
    assert replica_ports(Env({"LLMMESH_CHAT_REPLICA_PORTS": "7001",
                              "LLMMESH_CHAT_REPLICA_METRICS_PORTS": "7002"}),
                         "chat", 50052, 0, 2) == [(50052, 0), (7001, 7002)]
    with pytest.raises(ConfigError, match="LLMMESH_CHROMA_HOST"):
        Mesh({"LLMMESH_DATA_DIR": "/tmp/unused"}, replicas="document=2")


def test_the_replicas_run_behind_envoy(mesh: ReplicaMesh) -> None:
    banner = mesh.launcher.output
    for name in ("auth-1", "auth-2", "chat-1", "chat-2", "ratelimit-1", "ratelimit-2"):
        assert f"  {name} " in banner, banner
    assert set(mesh.hosts("auth")) == {mesh.ports["auth"], mesh.ports["auth-2"]}
    assert set(mesh.hosts("chat")) == {mesh.ports["chat"], mesh.ports["chat-2"]}
    assert len(mesh.hosts("ratelimit")) == 2
    # Each replica its own process group (and session).
    pids = [_replica_pid(mesh, "chat", mesh.ports[name]) for name in ("chat", "chat-2")]
    assert len({os.getpgid(pid) for pid in pids}) == 2
    assert all(os.getpgid(pid) == pid for pid in pids)
    # Chat's replicas dial auth's through an ipv4: list, each in its own order.
    targets = set()
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        targets |= {line for line in environ if line.startswith(b"LLMMESH_AUTH_ADDRESS=")}
    assert targets == {
        f"LLMMESH_AUTH_ADDRESS=ipv4:127.0.0.1:{a},127.0.0.1:{b}".encode()
        for a, b in ((mesh.ports["auth"], mesh.ports["auth-2"]),
                     (mesh.ports["auth-2"], mesh.ports["auth"]))}


def test_a_rate_limit_holds_exactly_across_replicas(mesh: ReplicaMesh) -> None:
    metadata = _user(mesh, "ratelimited")
    clear_of_window_edge_sync()  # exact counts: all in one (hour) window
    before = mesh.served("ratelimit")
    auth = auth_pb2_grpc.AuthServiceStub(mesh.channel())
    outcomes = _concurrently([
        lambda: auth.GetUser(auth_pb2.GetUserRequest(name="users/me"), metadata=metadata,
                             timeout=10) for _ in range(4 * RATE_LIMIT)])
    answered = [o for o in outcomes if isinstance(o, auth_pb2.User)]
    refused = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(answered) == RATE_LIMIT and len(refused) == 3 * RATE_LIMIT, outcomes
    after = mesh.served("ratelimit")
    assert all(after[port] > before[port] for port in after), (before, after)


def test_the_monthly_quota_holds_exactly_across_replicas(mesh: ReplicaMesh) -> None:
    metadata = _user(mesh, "quotauser")
    before = mesh.served("chat")
    chat = chat_pb2_grpc.ChatServiceStub(mesh.channel())
    outcomes = _concurrently([
        lambda: chat.Chat(chat_pb2.ChatRequest(
            message="Tell me about the tides please",
            options=chat_pb2.ChatOptions(max_tokens=40)), metadata=metadata, timeout=20)
        for _ in range(16)])
    answered = [o for o in outcomes if isinstance(o, chat_pb2.ChatResponse)]
    refused = [o for o in outcomes if o == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(answered) + len(refused) == len(outcomes), outcomes
    assert answered and refused, outcomes
    after = mesh.served("chat")
    assert all(after[port] > before[port] for port in after), (before, after)
    # The ledger, read from each auth replica: never past the limit, exactly what the
    # answered turns used, no hold left open.
    for port in (mesh.ports["auth"], mesh.ports["auth-2"]):
        usage = auth_pb2_grpc.AuthServiceStub(mesh.channel(port)).GetUsage(
            auth_pb2.GetUsageRequest(name="users/me/usages/current"), metadata=metadata,
            timeout=10)
        assert usage.tokens_used <= MONTHLY_TOKENS, usage
        assert usage.tokens_used == sum(o.usage.total_tokens for o in answered), usage
        assert usage.tokens_reserved == 0, usage
    # Both auth replicas took quota calls (chat's replicas dial them in turn).
    for name in ("auth-1", "auth-2"):
        log = (mesh.data_dir / "logs" / f"{name}.log").read_text(errors="replace")
        assert "QuotaService/" in log, name


@dataclass
class Call:
    what: str
    started: float
    took: float
    outcome: object


def test_a_killed_replica_fails_its_calls_cleanly_and_loses_nothing(
        mesh: ReplicaMesh) -> None:
    # Each answer takes the model 0.3 s: the killed chat replica holds calls when it dies.
    mesh.model.script = Script(first_token_delay=0.3)
    channel = mesh.channel()
    auth, chat = auth_pb2_grpc.AuthServiceStub(channel), chat_pb2_grpc.ChatServiceStub(channel)
    calls: list[Call] = []
    users: list[str] = []
    turns: list[tuple[tuple[tuple[str, str], ...], str]] = []
    stop = threading.Event()

    def timed(what: str, call: Callable[[], T]) -> T | grpc.StatusCode:
        began = time.monotonic()
        outcome = _outcome(call)
        calls.append(Call(what, began, time.monotonic() - began, outcome))
        return outcome

    def load(worker: int) -> None:
        for index in range(1000):
            if stop.is_set():
                return
            name = f"load{worker}x{index}"
            created = timed("CreateUser", partial(auth.CreateUser, auth_pb2.CreateUserRequest(
                user=auth_pb2.User(username=name, email=f"{name}@example.com"),
                password=PASSWORD), timeout=15))
            if not isinstance(created, auth_pb2.User):
                continue
            users.append(name)
            login = timed("Login", partial(auth.Login, auth_pb2.LoginRequest(
                username=name, password=PASSWORD), timeout=15))
            if not isinstance(login, auth_pb2.LoginResponse):
                continue
            metadata = (("authorization", f"Bearer {login.tokens.access_token}"),)
            answer = timed("Chat", partial(chat.Chat, chat_pb2.ChatRequest(
                message=f"turn {name}", options=chat_pb2.ChatOptions(max_tokens=8)),
                metadata=metadata, timeout=15))
            if isinstance(answer, chat_pb2.ChatResponse):
                turns.append((metadata, answer.conversation))

    mark = len(mesh.launcher.lines)
    victims = {name: _replica_pid(mesh, name.partition("-")[0], mesh.ports[name])
               for name in ("auth-2", "chat-2")}
    with ThreadPoolExecutor(6) as pool:
        workers = [pool.submit(load, worker) for worker in range(6)]
        time.sleep(1.5)
        killed_at = time.monotonic()
        for pid in victims.values():
            os.killpg(pid, signal.SIGKILL)  # the replica's whole process group
        time.sleep(2.5)
        stop.set()
        for worker in workers:
            worker.result(30)
    mesh.model.script = Script()

    failed = [c for c in calls if not isinstance(c.outcome, auth_pb2.User | auth_pb2.LoginResponse
                                                  | chat_pb2.ChatResponse)]
    # In flight on a dead replica: UNAVAILABLE (503 at the edge), and never a hang.
    assert all(c.outcome == grpc.StatusCode.UNAVAILABLE for c in failed), failed
    assert max(c.took for c in calls) < 10, max(calls, key=lambda c: c.took)
    assert any(c.what == "Chat" for c in failed), "no chat call was in flight on chat-2"
    # New calls go to the surviving replicas (the edge retries what never reached one).
    after = [c for c in calls if c.started > killed_at + 0.5]
    assert after and all(c not in failed for c in after), [c for c in after if c in failed]
    assert sum(1 for c in calls if c.started < killed_at and c not in failed) > 0
    # Nothing acknowledged was lost: every created user logs in, every answered turn is
    # stored (read through the edge, from whichever replica).
    for name in users:
        auth.Login(auth_pb2.LoginRequest(username=name, password=PASSWORD), timeout=10)
    for metadata, conversation in turns:
        stored = chat.GetConversation(chat_pb2.GetConversationRequest(name=conversation),
                                      metadata=metadata, timeout=10)
        assert stored.message_count == 2, stored
    # The launcher restarts each replica on its own port, and Envoy takes it back.
    for name in victims:
        mesh.launcher.expect(f"{name} exited with code -9", 10, mark)
        mesh.launcher.expect(f"{name} is back on 127.0.0.1:{mesh.ports[name]}", 60, mark)
    for cluster, name in (("auth", "auth-2"), ("chat", "chat-2")):
        _wait(partial(_healthy, mesh, cluster, mesh.ports[name]), 10,
              f"{name} back in rotation")


def test_a_draining_replica_leaves_rotation(mesh: ReplicaMesh) -> None:
    long = " ".join(["tide"] * 60)
    # Long answers stream for ~3 s (50 ms a token); short ones take 0.1 s.
    mesh.model.script = Script(
        token_delay=0.05,
        reply=lambda messages: long if "long" in str(messages[-1]["content"]) else "ok then")
    channel = mesh.channel()
    chat = chat_pb2_grpc.ChatServiceStub(channel)
    for port in (mesh.ports["chat"], mesh.ports["chat-2"]):
        _wait(partial(_healthy, mesh, "chat", port), 10, "both chat replicas in rotation")
    # Streams until one replica serves one: that replica is drained.
    streams: list[Any] = []
    pool = ThreadPoolExecutor(4)
    draining = 0
    for attempt in range(3):
        metadata = _user(mesh, f"streamer{attempt}")
        stream = chat.StreamChat(chat_pb2.StreamChatRequest(
            message="a long answer please", options=chat_pb2.ChatOptions(max_tokens=100)),
            metadata=metadata, timeout=30)
        streams.append(stream)
        next(stream)  # started: on a replica now
        active = {port: int(stats["rq_active"]) for port, stats in mesh.hosts("chat").items()}
        draining = next((port for port, count in active.items() if count > 0), 0)
        if draining:
            break
    assert draining, "no stream seen on a replica"
    name = "chat-1" if draining == mesh.ports["chat"] else "chat-2"
    other = mesh.ports["chat-2"] if name == "chat-1" else mesh.ports["chat"]
    reading = [pool.submit(lambda s=stream: _outcome(lambda: list(s))) for s in streams]
    users = [_user(mesh, f"drain{index}") for index in range(4)]  # quota: ~8 turns each
    mark = len(mesh.launcher.lines)
    os.killpg(_replica_pid(mesh, "chat", draining), signal.SIGTERM)
    signalled = time.monotonic()
    outcomes: list[tuple[float, object]] = []
    left_rotation = 0.0
    served_when_out: dict[int, int] = {}
    index = 0
    while time.monotonic() - signalled < 5.5:
        began = time.monotonic() - signalled
        outcomes.append((began, _outcome(partial(chat.Chat, chat_pb2.ChatRequest(
            message="short", options=chat_pb2.ChatOptions(max_tokens=8)),
            metadata=users[index % len(users)], timeout=10))))
        index += 1
        time.sleep(0.05)
        if not left_rotation and "failed_active_hc" in \
                mesh.hosts("chat")[draining]["health_flags"]:
            left_rotation = time.monotonic() - signalled
        # Envoy's worker threads learn of the ejection a moment after its admin shows it.
        if left_rotation and not served_when_out and began > left_rotation + 1.0:
            served_when_out = {draining: _chat_calls(mesh, name),
                               other: mesh.served("chat")[other]}
    # Its own log, not Envoy's per-host request count, which also counts the health
    # checks that go on probing it.
    served_after = {draining: _chat_calls(mesh, name), other: mesh.served("chat")[other]}
    results = [future.result(30) for future in reading]
    pool.shutdown()
    mesh.model.script = Script()
    # The health check took the draining replica out within a few seconds, while it
    # kept serving (its drain delay): every call succeeded, on one replica or the other.
    assert 0 < left_rotation < 3.5, left_rotation
    failed = [(began, o) for began, o in outcomes if not isinstance(o, chat_pb2.ChatResponse)]
    assert failed == [], (failed, left_rotation)
    assert served_when_out[draining] > 0  # it served calls while leaving rotation
    assert served_after[draining] == served_when_out[draining], (served_when_out, served_after)
    assert served_after[other] > served_when_out[other], (served_when_out, served_after)
    # The streams it was serving finished (it drained them before exiting).
    for result in results:
        assert isinstance(result, list) and result[-1].WhichOneof("event") == "done", result
    mesh.launcher.expect(f"{name} exited with code 0", 15, mark)
    mesh.launcher.expect(f"{name} is back on 127.0.0.1:{draining}", 60, mark)
    _wait(partial(_healthy, mesh, "chat", draining), 10, "the replica back in rotation")
