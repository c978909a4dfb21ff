"""Chat service figures: added time-to-first-token, streaming throughput, memory.

Starts its own Redis, auth server, chat server (each its own process, as in the
mesh) and an OpenAI-compatible model server (another process, replying
instantly) on 127.0.0.1, runs bounded scenarios, prints figures and stops it all.

1. Time to first token at 1, 16 and 64 concurrent streams: StreamChat through the
   chat service vs calling the same model server directly, with the same
   `ChatOpenAI` client the service uses and with a bare HTTP/SSE client. "Added" is
   chat minus direct at the same percentile and concurrency.
2. Tokens per second one chat process streams when the model server emits instantly
   (one token per SSE event, and 16 per event), with the chat process's CPU use;
   and the `openai` SDK's own parse ceiling, for reference.
3. Resident memory of each process while 64 streams are in flight.

    .venv/bin/python bench/chat_bench.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_openai import ChatOpenAI
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchkit import percentile  # noqa: E402
from harness import concurrently, cpu_seconds, rss_mib, start  # noqa: E402

from mesh.redis_server import LocalRedis, free_port  # noqa: E402
from tests.chat.openai_server import OpenAIServer, Script  # noqa: E402

SERVICE_TOKEN = "bench-service-token-" + "x" * 32
BENCH_PASSWORD = "correct horse battery"  # noqa: S105 — a throwaway local user
TTFT_REQUESTS = {1: 150, 16: 480, 64: 960}
THROUGHPUT_TOKENS = 20_000
SCENARIO_TIMEOUT_SECONDS = 120.0




# --- processes -----------------------------------------------------------------------


def serve_model(port_file: str) -> None:
    """Child mode: the model server, scripts chosen by the request's model name."""
    async def main() -> None:
        server = OpenAIServer(record=False)
        server.by_model = {
            "short": Script(reply=lambda _: "one two three four five six seven eight"),
            "long": Script(reply=lambda _: " ".join(["tok"] * THROUGHPUT_TOKENS)),
            "long16": Script(reply=lambda _: " ".join(["tok"] * THROUGHPUT_TOKENS),
                             tokens_per_event=16),
            "slow": Script(reply=lambda _: " ".join(["tok"] * 60), token_delay=0.05),
        }
        await server.start()
        await asyncio.to_thread(Path(port_file).write_text, str(server.port))
        await asyncio.Event().wait()

    asyncio.run(main())


def wait_serving(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"{address} exited: {log.read_text()[-2000:]}")
            try:
                # types-grpcio-health-checking's HealthStub declares no methods (the
                # generated class sets them in __init__).
                answer = stub.Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=1)
                if answer.status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise RuntimeError(f"{address} did not start")


# --- measurements ----------------------------------------------------------------------


class Bench:
    def __init__(self, chat: chat_pb2_grpc.ChatServiceAsyncStub,
                 metadata: tuple[tuple[str, str], ...], model_url: str) -> None:
        self.chat = chat
        self.metadata = metadata
        self.model_url = model_url
        self.direct = ChatOpenAI(model="short", base_url=model_url, api_key=SecretStr("k"),
                                 stream_usage=True, max_retries=0)
        self.http = httpx.AsyncClient(limits=httpx.Limits(max_connections=256))

    async def chat_ttft(self, model: str = "short") -> float:
        started = time.perf_counter()
        call = self.chat.StreamChat(chat_pb2.StreamChatRequest(
            message="hello", options=chat_pb2.ChatOptions(model=model)), metadata=self.metadata)
        first = 0.0
        async for event in call:
            if not first and event.WhichOneof("event") == "delta":
                first = time.perf_counter() - started
        return first

    async def langchain_ttft(self) -> float:
        started = time.perf_counter()
        first = 0.0
        # The same prompt shape the service sends (system + question).
        async for chunk in self.direct.astream([SystemMessage("You are helpful."),
                                                HumanMessage("hello")], max_tokens=64):
            if not first and chunk.content:
                first = time.perf_counter() - started
        return first

    async def http_ttft(self) -> float:
        started = time.perf_counter()
        first = 0.0
        body = {"model": "short", "stream": True, "max_tokens": 64,
                "messages": [{"role": "user", "content": "hello"}]}
        async with self.http.stream("POST", f"{self.model_url}/chat/completions",
                                    json=body) as response:
            async for line in response.aiter_lines():
                if not first and '"content": "one"' in line:
                    first = time.perf_counter() - started
        return first

    async def chat_tokens(self, model: str) -> int:
        tokens = 0
        call = self.chat.StreamChat(chat_pb2.StreamChatRequest(
            message="go", options=chat_pb2.ChatOptions(model=model, max_tokens=50_000)),
            metadata=self.metadata)
        async for event in call:
            if event.WhichOneof("event") == "delta":
                tokens += event.delta.text.count("tok")
        return tokens


async def ttft_section(bench: Bench) -> None:
    print("\n1. time to first token (ms), p50 / p95; added = chat - direct")
    for workers, total in TTFT_REQUESTS.items():
        results = {}
        for name, once in (("chat", bench.chat_ttft), ("langchain", bench.langchain_ttft),
                           ("http", bench.http_ttft)):
            await concurrently(workers, workers * 2, once)  # warm-up
            results[name] = [s * 1000 for s in await concurrently(workers, total, once)]
        line = {n: (percentile(s, 0.5), percentile(s, 0.95)) for n, s in results.items()}
        chat, lc, http = line["chat"], line["langchain"], line["http"]
        print(f"  {workers:>2} streams ({total} each): chat {chat[0]:.2f} / {chat[1]:.2f}"
              f" | direct ChatOpenAI {lc[0]:.2f} / {lc[1]:.2f}"
              f" | direct HTTP {http[0]:.2f} / {http[1]:.2f}")
        print(f"      added vs ChatOpenAI: {chat[0] - lc[0]:+.2f} / {chat[1] - lc[1]:+.2f}"
              f"   added vs bare HTTP: {chat[0] - http[0]:+.2f} / {chat[1] - http[1]:+.2f}")


async def throughput_section(bench: Bench, chat_pid: int, model_url: str) -> None:
    print("\n2. tokens per second one chat process streams (model server emits instantly)")
    for model, label in (("long", "1 token per SSE event"), ("long16", "16 tokens per event")):
        for streams in (1, 4):
            cpu0, t0 = cpu_seconds(chat_pid), time.perf_counter()
            counts = await asyncio.wait_for(asyncio.gather(
                *(bench.chat_tokens(model) for _ in range(streams))), SCENARIO_TIMEOUT_SECONDS)
            elapsed, cpu = time.perf_counter() - t0, cpu_seconds(chat_pid) - cpu0
            assert all(c == THROUGHPUT_TOKENS for c in counts), counts
            print(f"  {label}, {streams} stream(s): {sum(counts) / elapsed:,.0f} tokens/s"
                  f" (chat process CPU {cpu / elapsed:.2f} cores)")
    import openai

    client = openai.AsyncOpenAI(base_url=model_url, api_key="k")
    t0, events = time.perf_counter(), 0
    stream = await client.chat.completions.create(
        model="long", messages=[{"role": "user", "content": "go"}], stream=True)
    async for _ in stream:
        events += 1
    print(f"  reference: the openai SDK alone parses {events / (time.perf_counter() - t0):,.0f}"
          " events/s in this process (ChatOpenAI sits on it)")


async def memory_section(bench: Bench, pids: dict[str, int]) -> None:
    print("\n3. resident memory (MiB)")
    idle = {name: rss_mib(pid) for name, pid in pids.items()}
    tasks = [asyncio.create_task(bench.chat_ttft("slow")) for _ in range(64)]
    await asyncio.sleep(1.5)  # all 64 streams are mid-answer (60 tokens, 50 ms apart)
    busy = {name: rss_mib(pid) for name, pid in pids.items()}
    await asyncio.wait_for(asyncio.gather(*tasks), SCENARIO_TIMEOUT_SECONDS)
    for name in pids:
        print(f"  {name:<13} idle {idle[name]:6.1f}   under 64 streams {busy[name]:6.1f}")


async def run_bench(model_url: str, auth_address: str, chat_address: str,
                    pids: dict[str, int]) -> None:
    async with grpc.aio.insecure_channel(auth_address) as auth_channel, \
            grpc.aio.insecure_channel(chat_address) as chat_channel:
        auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
        await auth.CreateUser(auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username="bench", email="bench@example.com"),
            password=BENCH_PASSWORD))
        login = await auth.Login(auth_pb2.LoginRequest(username="bench",
                                                       password=BENCH_PASSWORD))
        metadata = (("authorization", f"Bearer {login.tokens.access_token}"),)
        bench = Bench(chat_pb2_grpc.ChatServiceStub(chat_channel), metadata, model_url)
        try:
            await ttft_section(bench)
            await throughput_section(bench, pids["chat"], model_url)
            await memory_section(bench, pids)
        finally:
            await bench.http.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-model", metavar="PORT_FILE", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve_model:
        serve_model(options.serve_model)
        return
    import langchain_openai

    print(f"cores: {os.cpu_count()} (usable {len(os.sched_getaffinity(0))}), "
          f"python {sys.version.split()[0]}, grpcio {grpc.__version__}, "
          f"langchain-openai {langchain_openai.__version__}")
    with tempfile.TemporaryDirectory(prefix="chat-bench-") as tmp:
        work = Path(tmp)
        redis = LocalRedis(work / "redis", persistent=False)
        redis.start()
        processes: list[subprocess.Popen[bytes]] = []
        try:
            port_file = work / "model-port"
            model = start([__file__, "--serve-model", str(port_file)], dict(os.environ),
                          work / "model.log")
            processes.append(model)
            for _ in range(100):
                if port_file.exists() and port_file.read_text():
                    break
                time.sleep(0.1)
            model_url = f"http://127.0.0.1:{port_file.read_text()}/v1"
            auth_port, chat_port = free_port(), free_port()
            models = [{"id": name, "provider": "openai", "base_url": model_url, "api_key": "k",
                       "max_output_tokens": 50_000, "default_max_tokens": 64}
                      for name in ("short", "long", "long16", "slow")]
            env = {**os.environ, "LLMMESH_DATA_DIR": str(work / "data"),
                   "LLMMESH_REDIS_URL": redis.url, "LLMMESH_SERVICE_TOKEN": SERVICE_TOKEN,
                   "LLMMESH_AUTH_PORT": str(auth_port), "LLMMESH_CHAT_PORT": str(chat_port),
                   "LLMMESH_AUTH_METRICS_PORT": "0", "LLMMESH_CHAT_METRICS_PORT": "0",
                   "LLMMESH_AUTH_BCRYPT_COST": "4", "LLMMESH_LOG_LEVEL": "WARNING",
                   "LLMMESH_AUTH_DEFAULT_MONTHLY_TOKEN_LIMIT": str(10**12),
                   # 64 streams at once (the default per-process limit is 32).
                   "LLMMESH_CHAT_MAX_CONCURRENT_STREAMS": "512",
                   "LLMMESH_CHAT_MODELS": json.dumps(models)}
            auth = start(["-m", "services.auth"], env, work / "auth.log")
            processes.append(auth)
            wait_serving(f"127.0.0.1:{auth_port}", auth, work / "auth.log")
            chat = start(["-m", "services.chat"], env, work / "chat.log")
            processes.append(chat)
            wait_serving(f"127.0.0.1:{chat_port}", chat, work / "chat.log")
            pids = {"chat": chat.pid, "auth": auth.pid, "model server": model.pid,
                    "bench client": os.getpid()}
            asyncio.run(run_bench(model_url, f"127.0.0.1:{auth_port}",
                                  f"127.0.0.1:{chat_port}", pids))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
            redis.stop()


if __name__ == "__main__":
    main()
