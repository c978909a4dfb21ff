"""Chat hot path, side by side in one run (issue 11): llmmesh's `Chat` and `StreamChat`
against the seed's FastAPI pattern and `ChatOpenAI.astream` alone, one stub model for all.

Everything runs on 127.0.0.1 as its own process, on free ports, and is stopped when the
run ends, even on error: an OpenAI-compatible stub model (tests/chat/openai_server.py,
real HTTP + SSE, a 32-token reply, no delay), Redis, auth, the rate limit service, chat
(one process with LLMMESH_CHAT_WORKERS=1, another with --chat-workers), real Envoy in
front of the first (every rate limit raised out of reach: each request still makes the
full rate-limit round trip), and the seed's pattern: a FastAPI "gateway" app -> httpx ->
a FastAPI "chat service" app -> `ChatOpenAI.ainvoke`, each served by uvicorn in its own
process, and `ChatOpenAI.astream` alone in a process of its own. This process is the
client of the rest (aiohttp for HTTP, grpc.aio for gRPC).

1. unary: the seed's pattern; `Chat` over gRPC direct; `Chat` as REST through Envoy.
   p50 at c=1, p50 and req/s at c=16.
2. streams: `ChatOpenAI.astream` alone; `StreamChat` over gRPC direct; `StreamChat` as
   REST (SSE) through Envoy. First token and whole answer at c=1 and c=16, streams/s at
   c=16; and each process's CPU per stream.
3. workers: `StreamChat` streams/s at c=16 with 1 chat worker vs --chat-workers,
   measured here (the stub and this client share the cores with chat) and as the
   chat-bound ceiling (usable cores / chat CPU-seconds per stream).
4. RSS of each chat process (worker) while 64 streams are in flight, sampled during two
   waves of 64 (flat or growing).
5. the issue's targets, each next to its baseline from this run.

Paths alternate in blocks (3 rounds), so all see the same machine; latencies are
nearest-rank percentiles over every sample, rates the median of the rounds.

    .venv/bin/python bench/chat_hotpath_bench.py [--quick] [--chat-workers N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import httpx  # noqa: E402
import yaml  # noqa: E402
from benchkit import heading, percentile, wait_serving  # noqa: E402
from fastapi import FastAPI  # noqa: E402
from harness import (  # noqa: E402
    cpu_seconds,
    descendants,
    listening_pids,
    log_tail,
    rss_mib,
    run_workers,
    start,
    stop_all,
    unlimited,
    wait_port_file,
)
from langchain_core.messages import HumanMessage, SystemMessage  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc  # noqa: E402
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc  # noqa: E402
from pydantic import BaseModel, Field, SecretStr  # noqa: E402

from gateway import deployment  # noqa: E402
from gateway.envoy_config import ratelimit_rules  # noqa: E402
from gateway.envoy_process import EnvoyProcess, envoy_binary  # noqa: E402
from gateway.local_edge import start_local_edge  # noqa: E402
from gateway.spec import LLMMESH_SPEC  # noqa: E402
from mesh.redis_server import LocalRedis, free_port  # noqa: E402

MODEL = "stub32"
SLOW_MODEL = "stub32-slow"  # the same reply, 60 ms between tokens (the memory waves)
TOKENS = 32
REPLY = " ".join(f"tok{i}" for i in range(TOKENS))  # the stub sends one word per event
SLOW_TOKEN_DELAY_S = 0.06
MAX_TOKENS = 64
SYSTEM = "You are a helpful assistant."
QUESTION = "hello"
SERVICE_TOKEN = "bench-service-token-" + "x" * 32
PASSWORD = "correct horse battery"  # noqa: S105 — a throwaway local user
STARTUP_S = 90.0
LOAD_TIMEOUT_S = 120.0
ROUNDS = 3
HIGH = 16  # the "c=16"
MEMORY_STREAMS = 64

# (first token, whole answer) in seconds; a unary call has no first token: both the same.
Once = Callable[[int], Awaitable[tuple[float, float]]]
# `total` calls at `concurrency`: their samples.
Block = Callable[[int, int], Awaitable[list[tuple[float, float]]]]


# --- the seed's pattern: FastAPI gateway -> httpx -> FastAPI chat -> ChatOpenAI.ainvoke ---
# Its request path from ../shared/seed/llm-msa-fastapi-langchain.md stripped to the hops
# (no auth, rate limit, Redis history or logging middleware): the pattern's floor.


class SeedChatRequest(BaseModel):
    message: str
    conversation_id: str | None = None
    model: str = MODEL
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(default=MAX_TOKENS, ge=1, le=4000)


class SeedGenerateRequest(BaseModel):
    user_id: str
    conversation_id: str
    message: str
    model: str = MODEL
    temperature: float = 0.7
    max_tokens: int = MAX_TOKENS


class SeedMessage(BaseModel):
    role: str
    content: str
    timestamp: float | None = None


class SeedChatResponse(BaseModel):
    conversation_id: str
    message: SeedMessage
    response: SeedMessage
    model_used: str
    tokens_used: int
    response_time: float


def seed_chat_app(model_url: str) -> FastAPI:
    app = FastAPI(title="Chat Service")
    llm = ChatOpenAI(model=MODEL, base_url=model_url, api_key=SecretStr("k"), max_retries=0)

    @app.post("/generate", response_model=None)
    async def generate(request: SeedGenerateRequest) -> dict[str, Any]:
        started = time.time()
        answer = await llm.ainvoke([SystemMessage(SYSTEM), HumanMessage(request.message)],
                                   max_tokens=request.max_tokens,
                                   temperature=request.temperature)
        tokens = answer.usage_metadata["total_tokens"] if answer.usage_metadata else 0
        return {"conversation_id": request.conversation_id,
                "message": {"role": "user", "content": request.message,
                            "timestamp": time.time()},
                "response": {"role": "assistant", "content": answer.text,
                             "timestamp": time.time()},
                "model_used": request.model, "tokens_used": tokens,
                "response_time": time.time() - started}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


def seed_gateway_app(chat_url: str) -> FastAPI:
    app = FastAPI(title="LLM MSA API Gateway")
    client = httpx.AsyncClient(timeout=30.0)

    @app.post("/api/v1/chat/", response_model=SeedChatResponse)
    async def chat(request: SeedChatRequest) -> SeedChatResponse:
        conversation_id = request.conversation_id or str(uuid.uuid4())
        response = await client.post(f"{chat_url}/generate", json={
            "user_id": "bench", "conversation_id": conversation_id,
            "message": request.message, "model": request.model,
            "temperature": request.temperature, "max_tokens": request.max_tokens})
        response.raise_for_status()
        return SeedChatResponse(**response.json())

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "healthy"}

    return app


def serve_uvicorn(app: FastAPI, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_model(port_file: str) -> None:
    """Child mode: the stub model."""
    from tests.chat.openai_server import OpenAIServer, Script

    async def main() -> None:
        server = OpenAIServer(record=False)
        server.by_model = {MODEL: Script(reply=lambda _: REPLY),
                           SLOW_MODEL: Script(reply=lambda _: REPLY,
                                              token_delay=SLOW_TOKEN_DELAY_S)}
        await server.start()
        await asyncio.to_thread(Path(port_file).write_text, str(server.port))
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_astream(model_url: str) -> None:
    """Child mode: `ChatOpenAI.astream` alone in its own process. Each line on stdin,
    "CONCURRENCY TOTAL", runs that many streams; one JSON line of (first token, whole
    answer) samples answers it."""
    llm = ChatOpenAI(model=MODEL, base_url=model_url, api_key=SecretStr("k"),
                     stream_usage=True, max_retries=0)

    async def once(_: int) -> tuple[float, float]:
        started = time.perf_counter()
        first = 0.0
        parts: list[str] = []
        async for chunk in llm.astream([SystemMessage(SYSTEM), HumanMessage(QUESTION)],
                                       max_tokens=MAX_TOKENS):
            if chunk.text:
                if not first:
                    first = time.perf_counter() - started
                parts.append(chunk.text)
        elapsed = time.perf_counter() - started
        check("".join(parts), "astream")
        return first, elapsed

    async def main() -> None:
        while line := await asyncio.to_thread(sys.stdin.readline):
            concurrency, total = (int(word) for word in line.split())
            samples = await run_workers(concurrency, total, once, LOAD_TIMEOUT_S)
            sys.stdout.write(json.dumps(samples) + "\n")
            sys.stdout.flush()

    asyncio.run(main())


class AstreamProcess:
    """The parent's end of `serve_astream`."""

    def __init__(self, model_url: str, log: Path) -> None:
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--serve-astream", model_url], cwd=ROOT,
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out)
        self.log = log

    async def block(self, concurrency: int, total: int) -> list[tuple[float, float]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{concurrency} {total}\n".encode())
        self.process.stdin.flush()
        line = await asyncio.to_thread(self.process.stdout.readline)
        if not line:
            raise RuntimeError(f"the astream process ended:\n{log_tail(self.log)}")
        return [(first, whole) for first, whole in json.loads(line)]


# --- the processes ----------------------------------------------------------------------


@dataclass
class Chat:
    """One chat service (its process tree) and its serving processes."""

    label: str
    process: subprocess.Popen[bytes]
    port: int
    requested: int
    workers: list[int] = field(default_factory=list)

    def tree(self) -> list[int]:
        return [self.process.pid, *descendants(self.process.pid)]


class Stack:
    def __init__(self, work: Path, chat_workers: int) -> None:
        self.work = work
        self.chat_workers = chat_workers
        self.redis = LocalRedis(work / "redis", persistent=False)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.envoy: EnvoyProcess | None = None
        self.ports = {name: free_port() for name in
                      ("auth", "ratelimit", "m_rl", "edge", "admin", "seed_gw", "seed_chat")}
        self.model_url = ""
        self.pids: dict[str, int] = {}
        self.chats: list[Chat] = []
        self.astream: AstreamProcess | None = None

    def env(self) -> dict[str, str]:
        models = [{"id": name, "provider": "openai", "base_url": self.model_url,
                   "api_key": "k", "max_output_tokens": 4096,
                   "default_max_tokens": MAX_TOKENS} for name in (MODEL, SLOW_MODEL)]
        return {**os.environ, "LLMMESH_DATA_DIR": str(self.work / "data"),
                "LLMMESH_REDIS_URL": self.redis.url, "LLMMESH_SERVICE_TOKEN": SERVICE_TOKEN,
                "LLMMESH_LOG_LEVEL": "WARNING", "LLMMESH_AUTH_BCRYPT_COST": "4",
                "LLMMESH_AUTH_PORT": str(self.ports["auth"]),
                "LLMMESH_AUTH_METRICS_PORT": "0",
                "LLMMESH_AUTH_DEFAULT_MONTHLY_TOKEN_LIMIT": str(10**12),
                "LLMMESH_RATELIMIT_PORT": str(self.ports["ratelimit"]),
                "LLMMESH_RATELIMIT_METRICS_PORT": str(self.ports["m_rl"]),
                "LLMMESH_RATELIMIT_CONFIG": str(self.work / "ratelimit.yaml"),
                "LLMMESH_CHAT_METRICS_PORT": "0",
                "LLMMESH_CHAT_MAX_CONCURRENT_STREAMS": "512",
                "LLMMESH_CHAT_MODELS": json.dumps(models)}

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None
              ) -> subprocess.Popen[bytes]:
        process = start(args, env or self.env(), self.work / f"{name}.log")
        self.processes.append(process)
        self.pids[name] = process.pid
        return process

    async def start(self) -> None:
        self.redis.start()
        assert self.redis.process is not None
        self.pids["redis"] = self.redis.process.pid
        port_file = self.work / "model.port"
        model = self.spawn("model", [__file__, "--serve-model", str(port_file)], dict(os.environ))
        model_port = wait_port_file(port_file, model, self.work / "model.log")
        self.model_url = f"http://127.0.0.1:{model_port}/v1"
        self.astream = AstreamProcess(self.model_url, self.work / "astream.log")
        self.processes.append(self.astream.process)
        self.pids["astream"] = self.astream.process.pid
        spec = unlimited(LLMMESH_SPEC)
        (self.work / "ratelimit.yaml").write_text(yaml.safe_dump(ratelimit_rules(spec)))
        services = {"auth": self.spawn("auth", ["-m", "services.auth"]),
                    "ratelimit": self.spawn("ratelimit", ["-m", "gateway.ratelimit"])}
        for label, workers in (("chat", 1), (f"chat x{self.chat_workers}", self.chat_workers)):
            port = free_port()
            env = {**self.env(), "LLMMESH_CHAT_PORT": str(port),
                   "LLMMESH_CHAT_WORKERS": str(workers)}
            process = self.spawn(label, ["-m", "services.chat"], env)
            self.chats.append(Chat(label, process, port, workers))
        self.spawn("seed chat", [__file__, "--serve-seed-chat", str(self.ports["seed_chat"]),
                                 "--upstream", self.model_url])
        self.spawn("seed gateway", [__file__, "--serve-seed-gateway",
                                    str(self.ports["seed_gw"]), "--upstream",
                                    f"http://127.0.0.1:{self.ports['seed_chat']}"])
        for name, process in services.items():
            await self.serving(f"127.0.0.1:{self.ports[name]}", process, name)
        for chat in self.chats:
            await self.serving(f"127.0.0.1:{chat.port}", chat.process, chat.label)
            chat.workers = await serving_workers(chat)
        for name, key in (("seed chat", "seed_chat"), ("seed gateway", "seed_gw")):
            await http_ready(f"http://127.0.0.1:{self.ports[key]}/health",
                             self.processes[[p.pid for p in self.processes].index(
                                 self.pids[name])], self.work / f"{name}.log", name)
        target = deployment.local(
            spec, str(self.work / "edge"), listener_port=self.ports["edge"],
            admin_port=self.ports["admin"],
            upstreams={"auth": ("127.0.0.1", self.ports["auth"]),
                       "chat": ("127.0.0.1", self.chats[0].port)},
            ratelimit=("127.0.0.1", self.ports["ratelimit"]))
        self.envoy = start_local_edge(spec, target, log_path=self.work / "envoy.log")
        assert self.envoy.process is not None
        self.pids["envoy"] = self.envoy.process.pid

    async def serving(self, address: str, process: subprocess.Popen[bytes],
                      name: str) -> None:
        await wait_serving(address, process, STARTUP_S, name,
                           lambda: log_tail(self.work / f"{name}.log"))

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        # A chat with workers stops them itself; any it leaves behind are killed here.
        workers = [pid for chat in self.chats for pid in descendants(chat.process.pid)]
        stop_all(self.processes)
        for pid in workers:
            with contextlib.suppress(OSError):  # gone (or its id taken by another program)
                if b"services.chat" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
        self.redis.stop()


async def serving_workers(chat: Chat) -> list[int]:
    """The chat's serving processes, once as many as it was asked for listen (10 s at
    most: a supervisor may start its workers after the first one answers)."""
    deadline = time.monotonic() + 10
    while True:
        workers = listening_pids(chat.port, chat.tree())
        if len(workers) >= chat.requested or time.monotonic() > deadline:
            return workers or [chat.process.pid]
        await asyncio.sleep(0.2)


async def http_ready(url: str, process: subprocess.Popen[bytes], log: Path,
                     name: str) -> None:
    """Until GET `url` answers 200; raises if `process` exits or time runs out."""
    deadline = time.monotonic() + STARTUP_S
    async with aiohttp.ClientSession() as http:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} exited:\n{log_tail(log)}")
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready:\n{log_tail(log)}")
            await asyncio.sleep(0.1)


# --- the clients ------------------------------------------------------------------------


def grpc_pool(port: int, size: int) -> list[grpc.aio.Channel]:
    """`size` channels, each its own TCP connection (a local subchannel pool), so several
    chat workers sharing one port each get some."""
    return [grpc.aio.insecure_channel(f"127.0.0.1:{port}",
                                      options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(size)]


def check(text: str, what: str) -> None:
    if text.strip() != REPLY:
        raise AssertionError(f"{what}: unexpected answer {text[:120]!r}")


class Clients:
    def __init__(self, stack: Stack, bearer: str, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.bearer = bearer
        self.metadata = (("authorization", bearer),)
        self.edge = f"http://127.0.0.1:{stack.ports['edge']}"
        self.seed = f"http://127.0.0.1:{stack.ports['seed_gw']}/api/v1/chat/"
        self.pools = {chat.label: grpc_pool(chat.port, HIGH) for chat in stack.chats}
        self.stubs = {label: [chat_pb2_grpc.ChatServiceStub(c) for c in channels]
                      for label, channels in self.pools.items()}

    async def close(self) -> None:
        for channels in self.pools.values():
            for channel in channels:
                await channel.close()

    async def seed_unary(self, _: int) -> tuple[float, float]:
        started = time.perf_counter()
        async with self.http.post(self.seed, json={"message": QUESTION, "model": MODEL,
                                                   "max_tokens": MAX_TOKENS}) as response:
            body = await response.json()
        elapsed = time.perf_counter() - started
        check(body["response"]["content"], "seed pattern")
        return elapsed, elapsed

    def chat_grpc(self, label: str) -> Once:
        async def once(index: int) -> tuple[float, float]:
            stub = self.stubs[label][index % HIGH]
            started = time.perf_counter()
            reply = await stub.Chat(chat_pb2.ChatRequest(
                message=QUESTION, options=chat_pb2.ChatOptions(model=MODEL)),
                metadata=self.metadata, timeout=30)
            elapsed = time.perf_counter() - started
            check(reply.message.content, "Chat gRPC")
            return elapsed, elapsed
        return once

    async def chat_rest(self, _: int) -> tuple[float, float]:
        started = time.perf_counter()
        async with self.http.post(f"{self.edge}/v1/conversations:chat",
                                  json={"message": QUESTION, "options": {"model": MODEL}},
                                  headers={"authorization": self.bearer}) as response:
            body = await response.json()
        elapsed = time.perf_counter() - started
        assert response.status == 200, body
        check(body["message"]["content"], "Chat REST")
        return elapsed, elapsed

    def stream_grpc(self, label: str, model: str = MODEL) -> Once:
        async def once(index: int) -> tuple[float, float]:
            stub = self.stubs[label][index % HIGH]
            started = time.perf_counter()
            first = 0.0
            parts: list[str] = []
            call = stub.StreamChat(chat_pb2.StreamChatRequest(
                message=QUESTION, options=chat_pb2.ChatOptions(model=model)),
                metadata=self.metadata, timeout=60)
            async for event in call:
                if event.WhichOneof("event") == "delta":
                    if not first:
                        first = time.perf_counter() - started
                    parts.append(event.delta.text)
            elapsed = time.perf_counter() - started
            check("".join(parts), "StreamChat gRPC")
            return first, elapsed
        return once

    async def stream_rest(self, _: int) -> tuple[float, float]:
        started = time.perf_counter()
        first = 0.0
        parts: list[str] = []
        async with self.http.post(f"{self.edge}/v1/conversations:streamChat",
                                  json={"message": QUESTION, "options": {"model": MODEL}},
                                  headers={"authorization": self.bearer}) as response:
            assert response.status == 200, await response.text()
            while True:
                try:
                    frame = await response.content.readuntil(b"\n\n")
                except aiohttp.ClientPayloadError:
                    break
                if not frame:
                    break
                if b'"delta"' not in frame:
                    continue
                if not first:
                    first = time.perf_counter() - started
                for line in frame.decode().splitlines():
                    if line.startswith("data:"):
                        parts.append(json.loads(line[5:])["delta"].get("text", ""))
        elapsed = time.perf_counter() - started
        check("".join(parts), "StreamChat REST")
        return first, elapsed


# --- measuring --------------------------------------------------------------------------


@dataclass
class Result:
    firsts: list[float] = field(default_factory=list)
    wholes: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)
    count: int = 0
    elapsed: float = 0.0

    def p50(self, first: bool = False) -> float:
        return percentile(self.firsts if first else self.wholes, 0.5) * 1000

    @property
    def rate(self) -> float:
        return statistics.median(self.rates)

    def cpu_ms(self, group: str) -> float:
        """CPU milliseconds per request that `group` spent."""
        return self.cpu.get(group, 0.0) * 1000 / max(self.count, 1)


class Meter:
    """CPU seconds of each process group, read from /proc."""

    def __init__(self, stack: Stack) -> None:
        self.groups: dict[str, Callable[[], list[int]]] = {"client": lambda: [os.getpid()]}
        for name in ("model", "astream", "auth", "ratelimit", "redis", "envoy",
                     "seed gateway", "seed chat"):
            pid = stack.pids[name]
            self.groups[name] = lambda pid=pid: [pid]  # type: ignore[misc]
        for chat in stack.chats:
            self.groups[chat.label] = chat.tree
            for index, worker in enumerate(chat.workers if len(chat.workers) > 1 else []):
                self.groups[f"{chat.label} w{index}"] = lambda pid=worker: [pid]  # type: ignore[misc]

    def snapshot(self) -> dict[str, float]:
        return {name: sum(cpu_seconds(pid) for pid in pids())
                for name, pids in self.groups.items()}


def here(once: Once) -> Block:
    """A block of `once` calls made by this process."""
    async def block(concurrency: int, total: int) -> list[tuple[float, float]]:
        return await run_workers(concurrency, total, once, LOAD_TIMEOUT_S)
    return block


async def measure(meter: Meter, paths: dict[str, Block], concurrency: int, per_round: int,
                  rounds: int = ROUNDS) -> dict[str, Result]:
    """Each path in turn, `per_round` calls at `concurrency`, `rounds` times over."""
    results = {name: Result() for name in paths}
    for block in paths.values():
        await block(concurrency, 2 * concurrency + 4)  # warm-up
    for _ in range(rounds):
        for name, block in paths.items():
            result = results[name]
            before, started = meter.snapshot(), time.perf_counter()
            samples = await block(concurrency, per_round)
            elapsed, after = time.perf_counter() - started, meter.snapshot()
            result.firsts += [first for first, _ in samples]
            result.wholes += [whole for _, whole in samples]
            result.rates.append(per_round / elapsed)
            result.count += per_round
            result.elapsed += elapsed
            for group, seconds in after.items():
                result.cpu[group] = result.cpu.get(group, 0.0) + seconds - before[group]
    return results


def cpu_line(result: Result, groups: list[str]) -> str:
    return "  ".join(f"{group} {result.cpu_ms(group):.2f}" for group in groups
                     if result.cpu_ms(group) >= 0.005)


SERVICE_GROUPS = ["client", "model", "chat", "auth", "redis", "ratelimit", "envoy"]


async def unary_section(meter: Meter, clients: Clients, quick: bool
                        ) -> tuple[dict[str, Result], dict[str, Result]]:
    heading("1. unary: one whole answer per request (ms; req/s)")
    paths = {
        "seed pattern (FastAPI -> httpx -> FastAPI -> ainvoke)": here(clients.seed_unary),
        "llmmesh Chat, gRPC direct": here(clients.chat_grpc("chat")),
        "llmmesh Chat, REST through Envoy": here(clients.chat_rest),
    }
    low = await measure(meter, paths, 1, 20 if quick else 40)
    high = await measure(meter, paths, HIGH, 80 if quick else 160)
    print(f"  {'path':<56} {'c=1 p50':>8} {'c=16 p50':>9} {'c=16 req/s':>11}")
    for name in paths:
        print(f"  {name:<56} {low[name].p50():8.2f} {high[name].p50():9.2f}"
              f" {high[name].rate:11.1f}")
    print("  CPU ms per request at c=16, by process:")
    groups = [*SERVICE_GROUPS, "seed gateway", "seed chat"]
    for name in paths:
        print(f"    {name[:40]:<40} {cpu_line(high[name], groups)}")
    return low, high


async def stream_section(meter: Meter, stack: Stack, clients: Clients, quick: bool
                         ) -> tuple[dict[str, Result], dict[str, Result]]:
    heading("2. streams: first token / whole answer (ms; streams/s)")
    assert stack.astream is not None
    paths = {
        "ChatOpenAI.astream alone, in its own process": stack.astream.block,
        "llmmesh StreamChat, gRPC direct": here(clients.stream_grpc("chat")),
        "llmmesh StreamChat, REST (SSE) through Envoy": here(clients.stream_rest),
    }
    low = await measure(meter, paths, 1, 20 if quick else 40)
    high = await measure(meter, paths, HIGH, 80 if quick else 160)
    print(f"  {'path':<46} {'c=1 p50 first/whole':>20} {'c=16 p50 first/whole':>21}"
          f" {'c=16 streams/s':>15}")
    for name in paths:
        print(f"  {name:<46} {low[name].p50(True):9.2f} / {low[name].p50():7.2f}"
              f" {high[name].p50(True):9.2f} / {high[name].p50():8.2f} {high[name].rate:15.1f}")
    print("  CPU ms per stream at c=16, by process (client = this process; astream = the"
          " process running ChatOpenAI.astream alone):")
    for name in paths:
        print(f"    {name[:40]:<40} {cpu_line(high[name], ['astream', *SERVICE_GROUPS])}")
    return low, high


@dataclass
class Workers:
    supported: bool
    count: int
    one: Result | None = None
    many: Result | None = None


async def workers_section(meter: Meter, stack: Stack, clients: Clients, quick: bool
                          ) -> Workers:
    one, many = stack.chats
    heading(f"3. chat workers: StreamChat streams/s at c={HIGH}, 1 worker vs {many.requested}")
    print(f"  LLMMESH_CHAT_WORKERS=1: {len(one.workers)} serving process(es); "
          f"LLMMESH_CHAT_WORKERS={many.requested}: {len(many.workers)} serving process(es)"
          f" (those holding the listening socket), {len(many.tree())} in its process tree")
    if len(many.workers) < 2 or many.requested < 2:
        print(f"  LLMMESH_CHAT_WORKERS={many.requested}: not supported (no effect: "
              f"{len(many.workers)} chat process serves); 1-vs-N figures skipped")
        return Workers(False, len(many.workers))
    paths = {one.label: here(clients.stream_grpc(one.label)),
             many.label: here(clients.stream_grpc(many.label))}
    results = await measure(meter, paths, HIGH, 80 if quick else 160)
    cores = len(os.sched_getaffinity(0))
    base, multi = results[one.label], results[many.label]
    print(f"  {'':<12} {'streams/s':>10} {'chat CPU-ms/stream':>19} {'chat cores busy':>16}"
          f" {'chat-bound ceiling':>19}")
    for label, chat, result in ((one.label, one, base), (many.label, many, multi)):
        per_stream = result.cpu_ms(label)
        busy = result.cpu[label] / result.elapsed
        ceiling = min(len(chat.workers), cores) * 1000 / per_stream if per_stream else 0.0
        print(f"  {label:<12} {result.rate:10.1f} {per_stream:19.2f} {busy:16.2f}"
              f" {ceiling:17.0f}/s")
    shares = [multi.cpu.get(f"{many.label} w{i}", 0.0) for i in range(len(many.workers))]
    if sum(shares):
        print(f"  CPU split across the {len(shares)} workers: "
              + " / ".join(f"{100 * s / sum(shares):.0f}%" for s in shares))
    print(f"  CPU ms per stream, {many.label}: "
          + cpu_line(multi, ["client", "model", many.label, "auth", "redis"]))
    print(f"  How measured: {cores} usable cores run chat, the stub model and this client"
          " together, so the measured ratio is bounded by what the stub and client leave;"
          " the chat-bound ceiling is min(workers, cores) / chat CPU-seconds per stream,"
          " what chat alone could do with the model server and clients elsewhere.")
    return Workers(True, len(many.workers), base, multi)


@dataclass
class Memory:
    lines: list[str] = field(default_factory=list)
    growth_mib: float = 0.0


async def memory_section(stack: Stack, clients: Clients) -> Memory:
    heading(f"4. RSS per chat process (MiB) while {MEMORY_STREAMS} streams are in flight"
            f" ({TOKENS} tokens, {SLOW_TOKEN_DELAY_S * 1000:.0f} ms apart; two waves)")
    memory = Memory()
    for chat in stack.chats:
        if chat.requested > 1 and len(chat.workers) < 2:
            continue
        once = clients.stream_grpc(chat.label, SLOW_MODEL)
        idle = {pid: rss_mib(pid) for pid in chat.workers}
        waves: dict[int, list[list[float]]] = {pid: [] for pid in chat.workers}
        for _ in range(2):
            tasks = [asyncio.ensure_future(once(i)) for i in range(MEMORY_STREAMS)]
            samples: dict[int, list[float]] = {pid: [] for pid in chat.workers}
            for _ in range(4):
                await asyncio.sleep(0.4)
                for pid in chat.workers:
                    samples[pid].append(rss_mib(pid))
            await asyncio.wait_for(asyncio.gather(*tasks), LOAD_TIMEOUT_S)
            for pid in chat.workers:
                waves[pid].append(samples[pid])
        for index, pid in enumerate(chat.workers):
            after = rss_mib(pid)
            first, second = waves[pid]
            growth = max(second) - max(first)
            memory.growth_mib = max(memory.growth_mib, growth)
            line = (f"  {chat.label} w{index} (pid {pid}): idle {idle[pid]:.1f}; wave 1 "
                    + " ".join(f"{v:.1f}" for v in first) + "; wave 2 "
                    + " ".join(f"{v:.1f}" for v in second)
                    + f"; idle after {after:.1f}; wave 2 - wave 1 peak {growth:+.1f}")
            print(line)
            memory.lines.append(line)
    return memory


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def targets(unary: tuple[dict[str, Result], dict[str, Result]],
            streams: tuple[dict[str, Result], dict[str, Result]], workers: Workers,
            memory: Memory) -> None:
    heading("5. issue 11 targets, each against its baseline from this run")
    (u1, u16), (s1, s16) = unary, streams
    seed = "seed pattern (FastAPI -> httpx -> FastAPI -> ainvoke)"
    rest, grpc_direct = "llmmesh Chat, REST through Envoy", "llmmesh Chat, gRPC direct"
    astream, stream = ("ChatOpenAI.astream alone, in its own process",
                       "llmmesh StreamChat, gRPC direct")
    rows: list[tuple[str, str, str, str, str, bool]] = []

    ratio = u1[rest].p50() / u1[seed].p50()
    rows.append(("unary p50 c=1, REST via Envoy vs seed", f"{u1[rest].p50():.2f} ms",
                 f"{u1[seed].p50():.2f} ms", f"{ratio:.2f}x", "<= 1.00x", ratio <= 1.0))
    ratio = u1[grpc_direct].p50() / u1[seed].p50()
    rows.append(("  (gRPC direct vs seed)", f"{u1[grpc_direct].p50():.2f} ms",
                 f"{u1[seed].p50():.2f} ms", f"{ratio:.2f}x", "<= 1.00x", ratio <= 1.0))
    ratio = u16[rest].rate / u16[seed].rate
    rows.append((f"unary req/s c={HIGH}, REST via Envoy vs seed", f"{u16[rest].rate:.1f}/s",
                 f"{u16[seed].rate:.1f}/s", f"{ratio:.2f}x", ">= 2.00x", ratio >= 2.0))
    ratio = u16[grpc_direct].rate / u16[seed].rate
    rows.append(("  (gRPC direct vs seed)", f"{u16[grpc_direct].rate:.1f}/s",
                 f"{u16[seed].rate:.1f}/s", f"{ratio:.2f}x", ">= 2.00x", ratio >= 2.0))
    added = s1[stream].p50(True) - s1[astream].p50(True)
    rows.append(("StreamChat first token p50 c=1, gRPC vs astream",
                 f"{s1[stream].p50(True):.2f} ms", f"{s1[astream].p50(True):.2f} ms",
                 f"{added:+.2f} ms", "<= +2 ms", added <= 2.0))
    ratio = s16[stream].rate / s16[astream].rate
    rows.append((f"streams/s per chat process c={HIGH} vs astream",
                 f"{s16[stream].rate:.1f}/s", f"{s16[astream].rate:.1f}/s", f"{ratio:.2f}x",
                 ">= 0.80x", ratio >= 0.8))
    chat_cpu, lc_cpu = s16[stream].cpu_ms("chat"), s16[astream].cpu_ms("astream")
    ratio = lc_cpu / chat_cpu if chat_cpu else 0.0
    rows.append(("  (per CPU-second: 1/chat CPU vs 1/astream CPU)",
                 f"{1000 / chat_cpu if chat_cpu else 0:.0f}/s",
                 f"{1000 / lc_cpu if lc_cpu else 0:.0f}/s", f"{ratio:.2f}x", ">= 0.80x",
                 ratio >= 0.8))
    if workers.supported and workers.one and workers.many:
        one, many = workers.one, workers.many
        ratio = many.rate / one.rate
        rows.append((f"chat streams/s, {workers.count} workers vs 1 (measured)",
                     f"{many.rate:.1f}/s", f"{one.rate:.1f}/s", f"{ratio:.2f}x", ">= 1.70x",
                     ratio >= 1.7))
        labels = [label for label in many.cpu if label.startswith("chat x")
                  and " w" not in label]
        per_one = one.cpu_ms("chat")
        per_many = many.cpu_ms(labels[0]) if labels else 0.0
        cores = len(os.sched_getaffinity(0))
        ceiling_one = 1000 / per_one if per_one else 0.0
        ceiling_many = min(workers.count, cores) * 1000 / per_many if per_many else 0.0
        ratio = ceiling_many / ceiling_one if ceiling_one else 0.0
        rows.append(("  (chat-bound ceiling: cores / chat CPU per stream)",
                     f"{ceiling_many:.0f}/s", f"{ceiling_one:.0f}/s", f"{ratio:.2f}x",
                     ">= 1.70x", ratio >= 1.7))
    else:
        rows.append((f"chat streams/s, {workers.count} worker(s) vs 1", "not supported", "-",
                     "-", ">= 1.70x", False))
    print(f"  {'figure':<50} {'llmmesh':>13} {'baseline':>13} {'ratio':>9} {'target':>9}")
    for name, measured, baseline, ratio_text, target, ok in rows:
        print(f"  {name:<50} {measured:>13} {baseline:>13} {ratio_text:>9} {target:>9}"
              f"  {verdict(ok)}")
    flat = memory.growth_mib <= 5.0
    print(f"  RSS per chat worker under {MEMORY_STREAMS} streams: "
          f"{'flat' if flat else 'GROWING'} (largest wave-2-over-wave-1 peak growth "
          f"{memory.growth_mib:+.1f} MiB; flat = at most +5 MiB)")


# --- the run ----------------------------------------------------------------------------


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


async def login(stack: Stack) -> str:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['auth']}") as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        username = f"bench-{uuid.uuid4().hex[:10]}"
        await auth.CreateUser(auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username=username, email=f"{username}@example.com"),
            password=PASSWORD))
        answer = await auth.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
        return f"Bearer {answer.tokens.access_token}"


async def run(options: argparse.Namespace, envoy_version: str) -> None:
    import langchain_openai
    import openai

    print(f"chat hot path bench: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} "
          f"usable), Python {platform.python_version()}, grpcio {grpc.__version__}, "
          f"langchain-openai {langchain_openai.__version__}, openai {openai.__version__}, "
          f"envoy {envoy_version}")
    print(f"stub model: {TOKENS} tokens, one per SSE event, no delay; load average "
          f"{load_average()}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="chat-hotpath-bench-") as tmp:
        stack = Stack(Path(tmp), options.chat_workers)
        try:
            await stack.start()
            print(f"started in {time.monotonic() - started:.1f} s")
            bearer = await login(stack)
            meter = Meter(stack)
            connector = aiohttp.TCPConnector(limit=4 * MEMORY_STREAMS)
            async with aiohttp.ClientSession(connector=connector) as http:
                clients = Clients(stack, bearer, http)
                try:
                    unary = await unary_section(meter, clients, options.quick)
                    streams = await stream_section(meter, stack, clients, options.quick)
                    workers = await workers_section(meter, stack, clients, options.quick)
                    memory = await memory_section(stack, clients)
                    targets(unary, streams, workers, memory)
                finally:
                    await clients.close()
        finally:
            stack.stop()
    print(f"\nload average {load_average()}; total {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="half the samples")
    parser.add_argument("--chat-workers", type=int, default=2, metavar="N",
                        help="LLMMESH_CHAT_WORKERS to compare with 1 (default 2)")
    parser.add_argument("--serve-model", metavar="PORT_FILE", help=argparse.SUPPRESS)
    parser.add_argument("--serve-seed-chat", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-seed-gateway", type=int, metavar="PORT",
                        help=argparse.SUPPRESS)
    parser.add_argument("--serve-astream", metavar="MODEL_URL", help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_model:
        serve_model(options.serve_model)
    elif options.serve_astream:
        serve_astream(options.serve_astream)
    elif options.serve_seed_chat:
        serve_uvicorn(seed_chat_app(options.upstream), options.serve_seed_chat)
    elif options.serve_seed_gateway:
        serve_uvicorn(seed_gateway_app(options.upstream), options.serve_seed_gateway)
    else:
        version = subprocess.run([envoy_binary(), "--version"], capture_output=True,
                                 text=True, check=False).stdout.strip()
        asyncio.run(run(options, version.split("version: ")[-1]))


if __name__ == "__main__":
    main()
