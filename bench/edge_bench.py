"""Edge benchmark: what the Python edge adds, and how fast the rate limit service decides.

Prints figures; never fails on a number. Everything runs on 127.0.0.1 as separate
processes, as in the embedded default: a local Redis, auth (`python -m services.auth`),
the rate limit service (`python -m gateway.ratelimit`), the edge suite's test streaming
upstream (`tests/edge/upstream.py`) and the Python edge (this file's `--serve-edge`,
which is gateway.app.EdgeServer with the test spec, so the streaming upstream is routed).
The rate limit rules are the spec's with every limit raised (so no request is refused:
each one still makes the full rate-limit round trip).

1. unary: `GET /v1/users/me` through the edge (JWT check, rate limit, transcoding, the
   gRPC call) vs `AuthService.GetUser` over gRPC directly; p50/p95 and the p50 ratio
   (target <= 1.3x). Sequential, interleaved in blocks so both see the same machine.
2. rate limit: ShouldRateLimit latency (two descriptors, as the edge sends) with 200
   requests in flight at once, p50/p99.
3. streaming: time to first event of a server stream through the edge (first SSE frame)
   vs directly (first gRPC message), for the test-only `edgetest.v1.EdgeTestService/
   Stream` (20 events, no delay: the edge's added latency alone) and, when the chat
   service starts, for `ChatService/StreamChat` with its default offline model (time to
   the first token delta, which is what a user waits for). StreamChat was being built
   while this bench was written; if chat does not start, that part is skipped.

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
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import yaml  # noqa: E402
from benchkit import percentile  # noqa: E402
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc  # noqa: E402
from grpc_health.v1 import health_pb2, health_pb2_grpc  # noqa: E402
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402

from gateway.spec import Limit, RouteClass  # noqa: E402
from services.mesh.redis_server import LocalRedis, free_port  # noqa: E402

STARTUP_SECONDS = 60.0
PASSWORD = "correct horse battery"  # noqa: S105 — a throwaway bench user's




def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.3f} ms"


def bench_spec():  # type: ignore[no-untyped-def]
    from tests.edge.harness import TEST_SPEC

    classes = tuple(RouteClass(c.name, c.key, Limit(10**9, "minute"))
                    for c in TEST_SPEC.route_classes)
    return replace(TEST_SPEC, route_classes=classes, per_user_limit=Limit(10**9, "minute"))


# --- the edge process ---------------------------------------------------------------------


def serve_edge(descriptor_set: str, upstream: str) -> None:
    """`--serve-edge`: the Python edge with the bench spec (env gives the rest)."""
    from gateway.app import EdgeServer
    from gateway.config import EdgeConfig
    from services.runtime.logs import configure_logging
    from tests.edge.harness import TEST_UPSTREAM

    async def main() -> None:
        config = EdgeConfig.from_env()
        config = replace(config, descriptor_set=Path(descriptor_set), upstream_addresses={
            **config.upstream_addresses, TEST_UPSTREAM: upstream})
        configure_logging("edge", config.runtime.log_level)
        server = EdgeServer(config, bench_spec())
        await server.start()
        await asyncio.Event().wait()

    asyncio.run(main())


# --- set-up -------------------------------------------------------------------------------


class Stack:
    """The processes of one bench run."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.redis = LocalRedis(work / "redis", free_port(), persistent=False)
        self.ports = {name: free_port() for name in
                      ("auth", "ratelimit", "upstream", "edge", "m_auth", "m_rl", "chat",
                       "m_chat")}
        self.chat_ok = False
        self.processes: list[subprocess.Popen[bytes]] = []

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
                "LLMMESH_RATELIMIT_CONFIG": str(self.work / "ratelimit.yaml"),
                "LLMMESH_EDGE_PORT": str(self.ports["edge"])}

    def spawn(self, *argv: str) -> None:
        log = open(self.work / f"{len(self.processes)}.log", "wb")  # noqa: SIM115
        self.processes.append(subprocess.Popen([sys.executable, *argv], cwd=ROOT,
                                               env=self.env(), stdout=log,
                                               stderr=subprocess.STDOUT))
        log.close()

    async def start(self) -> None:
        from gateway.envoy_config import ratelimit_rules

        self.redis.start()
        (self.work / "ratelimit.yaml").write_text(yaml.safe_dump(ratelimit_rules(bench_spec())))
        self.spawn("-m", "services.auth")
        self.spawn("-m", "gateway.ratelimit")
        descriptors = self.work / "edgetest.binpb"
        self.spawn("-m", "tests.edge.upstream", "--port", str(self.ports["upstream"]),
                   "--descriptor-set", str(descriptors))
        for name in ("auth", "ratelimit"):
            await wait_serving(f"127.0.0.1:{self.ports[name]}")
        self.spawn("-m", "services.chat")
        try:
            await wait_serving(f"127.0.0.1:{self.ports['chat']}")
            self.chat_ok = True
        except RuntimeError as error:
            print(f"note: chat did not start ({error}); StreamChat figures skipped")
        await wait_for(lambda: descriptors.is_file())
        import llmmesh

        from gateway.descriptors import load_descriptor_set
        from tests.edge.harness import merge

        merged = self.work / "edge.binpb"
        merged.write_bytes(merge(load_descriptor_set(llmmesh.descriptor_set_path()),
                                 load_descriptor_set(descriptors)).SerializeToString())
        self.spawn(__file__, "--serve-edge", str(merged), f"127.0.0.1:{self.ports['upstream']}")
        await wait_http(f"http://127.0.0.1:{self.ports['edge']}/healthz")

    def stop(self) -> None:
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


async def wait_for(ready: Callable[[], bool]) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError("a bench process did not start")
        await asyncio.sleep(0.1)


async def wait_serving(address: str, within: float = STARTUP_SECONDS) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        deadline = time.monotonic() + within
        while True:
            try:
                answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{address} did not become healthy")
            await asyncio.sleep(0.1)


async def wait_http(url: str) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not answer")
            await asyncio.sleep(0.1)


# --- measurements -------------------------------------------------------------------------


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
        print(f"  {name:<34} p50 {ms(percentile(values, 0.5))}   "
              f"p{int(high * 100)} {ms(percentile(values, high))}   (n={len(values)})")


async def unary(stack: Stack, rounds: int) -> str:
    edge = f"http://127.0.0.1:{stack.ports['edge']}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['auth']}") as channel, \
            aiohttp.ClientSession() as http:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        username = f"bench-{uuid.uuid4().hex[:10]}"
        await stub.CreateUser(auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username=username, email=f"{username}@example.com"),
            password=PASSWORD))
        login = await stub.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
        bearer = f"Bearer {login.tokens.access_token}"

        async def direct() -> None:
            await stub.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                               metadata=(("authorization", bearer),), timeout=10)

        async def via_edge() -> None:
            async with http.get(f"{edge}/v1/users/me",
                                headers={"authorization": bearer}) as response:
                await response.read()
                assert response.status == 200, response.status

        samples = await interleaved({"GetUser, gRPC direct": direct,
                                     "GET /v1/users/me via edge": via_edge}, rounds)
    report("1. unary: REST through the edge vs gRPC direct", samples, 0.95)
    direct_p50 = percentile(samples["GetUser, gRPC direct"], 0.5)
    edge_p50 = percentile(samples["GET /v1/users/me via edge"], 0.5)
    ratio = edge_p50 / direct_p50
    print(f"  ratio (p50 edge / p50 direct)      {ratio:.2f}x   target <= 1.3x: "
          f"{'OK' if ratio <= 1.3 else 'MISSED'}   (added {ms(edge_p50 - direct_p50)})")
    return bearer


async def ratelimit(stack: Stack, waves: int, concurrency: int = 200) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['ratelimit']}") as channel:
        stub = rls_pb2_grpc.RateLimitServiceStub(channel)

        def request(user: str) -> rls_pb2.RateLimitRequest:
            entry = ratelimit_pb2.RateLimitDescriptor.Entry
            return rls_pb2.RateLimitRequest(domain="llmmesh", descriptors=[
                ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="route_class",
                                                                 value="default"),
                                                           entry(key="user", value=user)]),
                ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="user", value=user)])])

        async def one(user: str, samples: list[float]) -> None:
            started = time.perf_counter()
            answer = await stub.ShouldRateLimit(request(user), timeout=10)
            samples.append(time.perf_counter() - started)
            assert answer.overall_code == rls_pb2.RateLimitResponse.OK

        warm: list[float] = []
        await asyncio.gather(*(one(f"u{i}", warm) for i in range(concurrency)))
        samples: list[float] = []
        started = time.perf_counter()
        for wave in range(waves):
            await asyncio.gather(*(one(f"u{(wave * concurrency + i) % 1000}", samples)
                                   for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    report(f"2. rate limit decisions, {concurrency} in flight", {"ShouldRateLimit": samples},
           0.99)
    print(f"  throughput                         {len(samples) / elapsed:8.0f} decisions/s")


async def streaming(stack: Stack, rounds: int, bearer: str) -> None:
    from google.protobuf import descriptor_pb2

    from gateway.descriptors import build_pool, message_class

    files = descriptor_pb2.FileDescriptorSet.FromString(
        (stack.work / "edgetest.binpb").read_bytes())
    pool = build_pool(files)
    request_class = message_class(pool, "edgetest.v1.StreamRequest")
    event_class = message_class(pool, "edgetest.v1.StreamEvent")
    edge = f"http://127.0.0.1:{stack.ports['edge']}"
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['upstream']}") as channel, \
            aiohttp.ClientSession() as http:
        method = channel.unary_stream("/edgetest.v1.EdgeTestService/Stream",
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
                                     "first SSE frame via edge": via_edge}, rounds, block=25,
                                    warmup=20)
    report("3. time to first event of a stream (test-only streaming RPC)", samples, 0.95)
    added = (percentile(samples["first SSE frame via edge"], 0.5)
             - percentile(samples["first message, gRPC direct"], 0.5))
    print(f"  added by the edge (p50)            {ms(added)}")
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
            call = stub.StreamChat(chat_pb2.StreamChatRequest(**question),
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
                                         "first delta via edge": via_edge}, rounds,
                                        block=5, warmup=3)
        except (grpc.aio.AioRpcError, AssertionError, aiohttp.ClientError) as error:
            print(f"\nnote: StreamChat failed ({error!r:.200}); its figures are skipped")
            return
    report("3b. StreamChat: time to the first token delta", samples, 0.95)


async def run(quick: bool) -> None:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(f"edge bench: {cpus} cores ({usable} usable), Python {platform.python_version()}, "
          f"grpcio {grpc.__version__}, aiohttp {aiohttp.__version__}")
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            await stack.start()
            bearer = await unary(stack, 200 if quick else 1000)
            await ratelimit(stack, 2 if quick else 10)
            await streaming(stack, 100 if quick else 300, bearer)
        finally:
            stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="edge benchmark")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    parser.add_argument("--serve-edge", nargs=2, metavar=("DESCRIPTOR_SET", "UPSTREAM"),
                        help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_edge:
        serve_edge(*options.serve_edge)
        return
    asyncio.run(run(options.quick))


if __name__ == "__main__":
    main()
