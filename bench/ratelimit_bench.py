"""Rate limit service benchmark: ShouldRateLimit decisions/s and latency at 200 in flight.

Prints figures; never fails on a number (only on a sanity check). Everything runs on
127.0.0.1 as separate processes: a local Redis (mesh.redis_server.LocalRedis), the rate
limit service as shipped (`python -m gateway.ratelimit`) and the load, from `--clients`
client processes (this file's `--client` mode) that together keep exactly `--in-flight`
requests outstanding (a closed loop: each answer sends the next request). Clients send
pre-serialised requests and parse every answer, so they cost about what the server's gRPC
layer costs; on 2 cores they compete with the server, which is why each round prints every
process's CPU.

Each request is what the edge sends: domain `llmmesh`, two descriptors
[route_class=default, user=U] and [user=U], over 1,000 users per client process. The
rules have the shape of the spec's (every route class, per-user limits) with every limit
raised to 10^9 per hour: nothing is refused, but each decision still counts both of its
descriptors in Redis (checked at the end: Redis holds exactly 2 counts per answer), and
no counter expires during the run.

Per round (fresh client processes, ~4 s of start-up and warm-up, then `--seconds`
measured): decisions/s (answers completed inside the window), p50/p99 latency of the
requests sent inside it, server CPU and context switches per decision, and the cores
(CPU-seconds per second, from /proc) used by the server, Redis, the clients, everything
else on the machine ("other": a noisy neighbour skews a round) and the hypervisor
("stolen").

Optional targets, measured in rounds that alternate with the service's so that round i of
each saw about the same machine (the summary gives medians of per-round ratios):
`--compare DIR` the service from another checkout (`git archive HEAD | tar -x -C DIR`: an
A/B against the code before a change); `--floor` a bare grpc.aio server and MeshServer
alone (both answering a constant response without Redis): what gRPC and the shared
interceptor cost per call before any rate limiting is done.

The summary compares the medians with the baseline (1,041 decisions/s, p50 99.6 ms,
p99 215 ms: bench/edge_bench.py section 2 before this work) and the targets (>= 4x
decisions/s, p99 <= 10 ms at 200 in flight), and gives Little's law (mean latency =
in flight / decisions/s) next to the latency target.

Usage: .venv/bin/python bench/ratelimit_bench.py [--quick] [--floor] [--compare DIR]
       [--rounds N] [--seconds S] [--clients N] [--in-flight N]
(default 5 rounds of 6 s: ~50 s, ~2.5 min with --floor; --quick: 2 rounds of 3 s)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
import redis  # noqa: E402
import yaml  # noqa: E402
from benchkit import heading, percentile, stop_process, wait_serving  # noqa: E402
from envoy.config.core.v3 import base_pb2  # noqa: E402
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2  # noqa: E402
from envoy.service.ratelimit.v3 import rls_pb2  # noqa: E402

from mesh.redis_server import LocalRedis, free_port  # noqa: E402

METHOD = "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
DOMAIN = "llmmesh"
ROUTE_CLASS = "default"
USERS_PER_CLIENT = 1000
BASELINE_DECISIONS_PER_S = 1041.0  # bench/edge_bench.py section 2, before this work
BASELINE_P50_MS, BASELINE_P99_MS = 99.6, 215.0
TARGET_RATIO = 4.0
TARGET_P99_MS = 10.0
STARTUP_SECONDS = 60.0
CLIENT_START_SECONDS = 4.0  # clients import, connect and warm up before the window opens
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def rules() -> dict[str, object]:
    """The spec's shape (route class, then the caller; a per-user limit) with limits that
    never refuse, in hours so that no counter expires during a run."""
    never = {"unit": "hour", "requests_per_unit": 10**9}
    classes = [("account", "remote_address"), ("jwks", "remote_address"), ("chat", "user"),
               ("ingest", "user"), ("search", "user"), (ROUTE_CLASS, "user")]
    return {"domain": DOMAIN, "descriptors": [
        *({"key": "route_class", "value": name,
           "descriptors": [{"key": key, "rate_limit": never}]} for name, key in classes),
        {"key": "user", "rate_limit": never}]}


# --- the client process -------------------------------------------------------------------


def request_bytes(user: str) -> bytes:
    entry = ratelimit_pb2.RateLimitDescriptor.Entry
    return bytes(rls_pb2.RateLimitRequest(domain=DOMAIN, descriptors=[
        ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="route_class", value=ROUTE_CLASS),
                                                   entry(key="user", value=user)]),
        ratelimit_pb2.RateLimitDescriptor(entries=[entry(key="user", value=user)]),
    ]).SerializeToString())


async def client(address: str, index: int, in_flight: int, start_at: float,
                 seconds: float) -> dict[str, object]:
    """Keep `in_flight` calls outstanding until the window closes; requests are
    serialised once up front and every answer is parsed and checked for OK. A failed call
    (e.g. UNAVAILABLE while Redis does not answer in time) is counted by its code."""
    bodies = [request_bytes(f"c{index}-u{user}") for user in range(USERS_PER_CLIENT)]
    end = start_at + seconds
    latencies: list[float] = []
    completed = answered = refused = 0
    errors: dict[str, int] = {}
    ok = rls_pb2.RateLimitResponse.OK
    parse = rls_pb2.RateLimitResponse.FromString
    async with grpc.aio.insecure_channel(address) as channel:
        # bytes in, bytes out: no client-side protobuf work but the check of each answer
        call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
        await channel.channel_ready()
        late = time.monotonic() > start_at

        async def worker(first: int) -> None:
            nonlocal completed, answered, refused
            next_body = first
            while (started := time.monotonic()) < end:
                try:
                    reply = await call(bodies[next_body % USERS_PER_CLIENT], timeout=30)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] = errors.get(error.code().name, 0) + 1
                    continue
                finally:
                    next_body += in_flight
                finished = time.monotonic()
                answered += 1
                if parse(reply).overall_code != ok:
                    refused += 1
                if started >= start_at:
                    latencies.append(finished - started)
                if start_at <= finished <= end:
                    completed += 1

        await asyncio.gather(*(worker(first) for first in range(in_flight)))
    return {"completed": completed, "answered": answered, "refused": refused,
            "errors": errors, "late": late, "latencies": latencies}


def run_client(options: argparse.Namespace) -> None:
    result = asyncio.run(client(options.client, options.index, options.in_flight,
                                options.start_at, options.seconds))
    json.dump(result, sys.stdout)


# --- the floor: gRPC alone ----------------------------------------------------------------


def floor_response() -> bytes:
    """What the service answers for a bench request (two statuses, three headers)."""
    response = rls_pb2.RateLimitResponse
    status = response.DescriptorStatus(
        code=response.OK, limit_remaining=10**9 - 1,
        current_limit=response.RateLimit(requests_per_unit=10**9, unit=response.RateLimit.HOUR))
    status.duration_until_reset.FromSeconds(1800)
    headers = [("x-ratelimit-limit", "1000000000, 1000000000;w=3600, 1000000000;w=3600"),
               ("x-ratelimit-remaining", "999999999"), ("x-ratelimit-reset", "1800")]
    return bytes(response(
        overall_code=response.OK, statuses=[status, status],
        response_headers_to_add=[base_pb2.HeaderValue(key=key, value=value)
                                 for key, value in headers]).SerializeToString())


def serve_floor(port: int, kind: str) -> None:
    """`--serve-floor PORT KIND`: a server that answers every ShouldRateLimit with the same
    response, without Redis: what a Python gRPC server process costs per call before any
    rate limiting is done. KIND `bare`: grpc.aio alone (no interceptor; health only), the
    answer pre-serialised. KIND `mesh`: the service's own MeshServer (the shared
    interceptor, health, reflection, metrics) with a servicer that returns a prebuilt
    response message; the difference to `bare` is what the shared interceptor costs."""
    from envoy.service.ratelimit.v3 import rls_pb2_grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    from gateway.config import RateLimitServiceConfig
    from gateway.ratelimit.server import POLICY, SERVICE
    from services.runtime.jwt_verify import JwksCache, JwtVerifier
    from services.runtime.server import MeshServer, ServiceSpec

    answer = floor_response()
    message = rls_pb2.RateLimitResponse.FromString(answer)

    async def constant(request: object,
                       context: grpc.aio.ServicerContext[object, object]) -> object:
        return answer if kind == "bare" else message

    async def bare() -> None:
        server = grpc.aio.server()
        handlers: dict[str, grpc.RpcMethodHandler[object, object]] = {
            "ShouldRateLimit": grpc.unary_unary_rpc_method_handler(constant)}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE,
                                                                              handlers)])
        server.add_registered_method_handlers(SERVICE, handlers)
        checks = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await checks.set("", health_pb2.HealthCheckResponse.SERVING)
        await server.wait_for_termination()

    async def mesh() -> None:
        class Constant:
            ShouldRateLimit = staticmethod(constant)

        async def no_keys() -> dict[str, object]:
            return {"keys": []}

        config = RateLimitServiceConfig.from_env().runtime
        spec = ServiceSpec(names=[SERVICE], policy=POLICY, register=lambda server:
                           rls_pb2_grpc.add_RateLimitServiceServicer_to_server(Constant(),
                                                                                server))
        server = MeshServer(replace(config, port=port, metrics_port=0), spec,
                            JwtVerifier(JwksCache(no_keys), issuer="-", audience="-"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(bare() if kind == "bare" else mesh())


# --- the bench ----------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def context_switches(pid: int) -> int:
    """Voluntary and involuntary context switches of all of a process's threads."""
    total = 0
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        for line in status.read_text().splitlines():
            if line.endswith("ctxt_switches:") or "ctxt_switches:" in line:
                total += int(line.split()[1])
    return total


def machine_cpu() -> tuple[float, float]:
    """CPU-seconds the whole machine has been busy, and stolen by its hypervisor."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / CLOCK_TICKS, steal / CLOCK_TICKS


@dataclass
class Round:
    decisions_per_s: float
    p50_ms: float
    p99_ms: float
    server_cores: float
    redis_cores: float
    client_cores: float
    other_cores: float  # everything else on the machine: other work skews a round
    steal_cores: float
    server_switches: float  # the server's context switches per decision
    answered: int
    refused: int
    errors: dict[str, int]
    late: bool

    @property
    def server_cpu_ms(self) -> float:
        """Server CPU per decision."""
        return self.server_cores * 1000 / self.decisions_per_s

    @property
    def client_cpu_ms(self) -> float:
        return self.client_cores * 1000 / self.decisions_per_s


@dataclass
class Target:
    """One server under load: the service, a baseline checkout or a floor."""

    name: str
    address: str
    pid: int
    log: str
    counts_in_redis: str | None = None  # the key prefix of a service's counters
    rounds: list[Round] = field(default_factory=list)

    def median(self, attribute: str) -> float:
        return float(statistics.median(getattr(r, attribute) for r in self.rounds))


class Stack:
    """Redis, the servers under test (each a process) and their logs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.redis = LocalRedis(work / "redis", persistent=False)  # picks a free port
        self.redis_pid = 0
        self.processes: list[subprocess.Popen[bytes]] = []

    def spawn(self, name: str, argv: list[str], env: dict[str, str],
              cwd: Path = ROOT) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "wb") as log:
            process = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=env, stdout=log,
                                       stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def log_tail(self, name: str) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def start_redis(self) -> None:
        self.redis.start()
        with redis.Redis.from_url(self.redis.url) as client:
            self.redis_pid = int(client.info("server")["process_id"])
        (self.work / "ratelimit.yaml").write_text(yaml.safe_dump(rules()))

    async def start(self, name: str, argv: list[str], cwd: Path = ROOT,
                    prefix: str | None = None) -> Target:
        """A server process (`python -m gateway.ratelimit` from the checkout at `cwd`, or
        this file's floor) on a free port, once it answers health checks."""
        port = free_port()
        env = {**os.environ, "LLMMESH_DATA_DIR": str(self.work / "data"),
               "LLMMESH_REDIS_URL": self.redis.url, "LLMMESH_LOG_LEVEL": "WARNING",
               "LLMMESH_RATELIMIT_PORT": str(port), "LLMMESH_RATELIMIT_METRICS_PORT": "0",
               "LLMMESH_RATELIMIT_CONFIG": str(self.work / "ratelimit.yaml"),
               "LLMMESH_RATELIMIT_KEY_PREFIX": prefix or "unused:",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(cwd),
                                                           os.environ.get("PYTHONPATH")]))}
        log = name.replace(" ", "-")
        # The service reads its port from the environment; a floor takes it as argument.
        process = self.spawn(log, [*argv, *([] if prefix else [str(port)])], env, cwd)
        address = f"127.0.0.1:{port}"
        await wait_serving(address, process, STARTUP_SECONDS, name, lambda: self.log_tail(log))
        return Target(name, address, process.pid, log, prefix)

    def counted(self, prefix: str) -> int:
        """The sum of the counters a service wrote in Redis."""
        total = 0
        with redis.Redis.from_url(self.redis.url) as client:
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                total += int(client.get(key) or 0)
        return total

    def stop(self) -> None:
        for process in self.processes:
            stop_process(process, 10)
        self.redis.stop()


def spawn_clients(address: str, clients: int, in_flight: int, start_at: float,
                  seconds: float) -> list[subprocess.Popen[bytes]]:
    """`clients` client processes sharing `in_flight` between them."""
    shares = [in_flight // clients + (1 if i < in_flight % clients else 0)
              for i in range(clients)]
    return [subprocess.Popen(
        [sys.executable, __file__, "--client", address, "--index", str(i),
         "--in-flight", str(share), "--start-at", repr(start_at), "--seconds", repr(seconds)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i, share in enumerate(shares)]


async def one_round(target: Target, redis_pid: int, options: argparse.Namespace) -> Round:
    seconds = options.seconds
    start_at = time.monotonic() + CLIENT_START_SECONDS
    processes = spawn_clients(target.address, options.clients, options.in_flight, start_at,
                              seconds)
    try:
        pids = [target.pid, redis_pid, *(p.pid for p in processes)]
        await asyncio.sleep(max(start_at - time.monotonic(), 0))
        before, machine_before = [cpu_seconds(pid) for pid in pids], machine_cpu()
        switches_before = context_switches(target.pid)
        await asyncio.sleep(max(start_at + seconds - time.monotonic(), 0))
        after, machine_after = [cpu_seconds(pid) for pid in pids], machine_cpu()
        switches = context_switches(target.pid) - switches_before
        outputs = [await asyncio.to_thread(p.communicate, timeout=60) for p in processes]
    finally:
        for process in processes:
            stop_process(process, 5)
    for process, (_, errors) in zip(processes, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"a client process failed:\n{errors.decode()[-3000:]}")
    results = [json.loads(out) for out, _ in outputs]
    used = [(b - a) / seconds for a, b in zip(before, after, strict=True)]
    busy, steal = ((b - a) / seconds for a, b in zip(machine_before, machine_after, strict=True))
    latencies = [value for result in results for value in result["latencies"]]
    rate = sum(result["completed"] for result in results) / seconds
    return Round(decisions_per_s=rate,
                 p50_ms=percentile(latencies, 0.5) * 1000,
                 p99_ms=percentile(latencies, 0.99) * 1000, server_cores=used[0],
                 redis_cores=used[1], client_cores=sum(used[2:]),
                 other_cores=max(busy - sum(used), 0.0), steal_cores=steal,
                 server_switches=switches / (rate * seconds) if rate else math.nan,
                 answered=sum(result["answered"] for result in results),
                 refused=sum(result["refused"] for result in results),
                 errors=dict(sum((Counter(result["errors"]) for result in results), Counter())),
                 late=any(result["late"] for result in results))


def print_round(target: Target, number: int, r: Round) -> None:
    print(f"  {target.name:<16} round {number}: {r.decisions_per_s:6,.0f}/s   p50 "
          f"{r.p50_ms:6.2f} ms   p99 {r.p99_ms:6.2f} ms   CPU ms/decision: server "
          f"{r.server_cpu_ms:.3f}, clients {r.client_cpu_ms:.3f}   server context switches "
          f"{r.server_switches:.2f}/decision   cores: server "
          f"{r.server_cores:.2f}, redis {r.redis_cores:.2f}, clients {r.client_cores:.2f}, "
          f"other {r.other_cores:.2f}, stolen {r.steal_cores:.2f}"
          + (f"   failed calls: {r.errors}" if r.errors else "")
          + ("   (a client was late to the window)" if r.late else ""), flush=True)


def summary(targets: list[Target], options: argparse.Namespace) -> None:
    service = targets[0]
    rate, p99 = service.median("decisions_per_s"), service.median("p99_ms")
    heading(f"medians of {options.rounds} rounds, {options.in_flight} in flight")
    for target in targets:
        print(f"  {target.name:<16} {target.median('decisions_per_s'):7,.0f} decisions/s   "
              f"p50 {target.median('p50_ms'):6.2f} ms   p99 {target.median('p99_ms'):6.2f} ms   "
              f"server CPU {target.median('server_cpu_ms'):.3f} ms and "
              f"{target.median('server_switches'):.2f} context switches per decision   "
              f"cores: server "
              f"{target.median('server_cores'):.2f}, redis {target.median('redis_cores'):.2f}, "
              f"clients {target.median('client_cores'):.2f}, other "
              f"{target.median('other_cores'):.2f}")
    ratio = rate / BASELINE_DECISIONS_PER_S
    print(f"\n  vs the issue's baseline {BASELINE_DECISIONS_PER_S:,.0f}/s: {ratio:.2f}x (target "
          f">= {TARGET_RATIO:.0f}x: {'OK' if ratio >= TARGET_RATIO else 'MISSED'}); p99 "
          f"{p99:.2f} ms (baseline {BASELINE_P99_MS:.0f} ms; target <= {TARGET_P99_MS:.0f} ms: "
          f"{'OK' if p99 <= TARGET_P99_MS else 'MISSED'})")
    for other in targets[1:]:
        # Rounds of the targets alternate, so round i of each saw about the same machine.
        rates = statistics.median(a.decisions_per_s / b.decisions_per_s
                                  for a, b in zip(service.rounds, other.rounds, strict=True))
        cpu = statistics.median(a.server_cpu_ms / b.server_cpu_ms
                                for a, b in zip(service.rounds, other.rounds, strict=True))
        print(f"  vs {other.name:<21} decisions/s {rates:.2f}x, server CPU per decision "
              f"{cpu:.2f}x   (medians of per-round ratios)")
    floors = {target.name: target.median("server_cpu_ms") for target in targets
              if target.name.startswith("floor")}
    if len(floors) == 2:
        cpu_ms = service.median("server_cpu_ms")
        bare, mesh = floors["floor: grpc.aio"], floors["floor: MeshServer"]
        print(f"  server CPU per decision, {cpu_ms:.3f} ms: grpc.aio alone {bare:.3f} ms "
              f"({bare / cpu_ms:.0%}), + MeshServer's interceptor {mesh - bare:.3f} ms "
              f"({(mesh - bare) / cpu_ms:.0%}), + rate limiting (servicer, Redis) "
              f"{cpu_ms - mesh:.3f} ms ({(cpu_ms - mesh) / cpu_ms:.0%})")
    print(f"  per core of server CPU: {1000 / service.median('server_cpu_ms'):,.0f} decisions/s; "
          f"Little's law at {options.in_flight} in flight: mean latency = "
          f"{options.in_flight} / decisions/s = {options.in_flight / rate * 1000:.1f} ms, so a "
          f"p99 <= {TARGET_P99_MS:.0f} ms needs >= "
          f"{options.in_flight / (TARGET_P99_MS / 1000):,.0f} decisions/s")


async def run(options: argparse.Namespace) -> None:
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(f"rate limit bench: {cpus} cores ({usable} usable), Python "
          f"{platform.python_version()}, grpcio {grpc.__version__}; {options.clients} client "
          f"processes, {options.in_flight} in flight, {options.rounds} rounds of "
          f"{options.seconds:g} s; load average {os.getloadavg()[0]:.2f}")
    service = ["-m", "gateway.ratelimit"]
    with tempfile.TemporaryDirectory(prefix="ratelimit-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            stack.start_redis()
            targets = [await stack.start("service", service, ROOT,
                                         prefix=f"bench-{uuid.uuid4().hex[:8]}:")]
            if options.compare:
                targets.append(await stack.start("compared checkout", service, options.compare,
                                                 prefix=f"bench-{uuid.uuid4().hex[:8]}:"))
            if options.floor:
                for kind, name in (("bare", "floor: grpc.aio"), ("mesh", "floor: MeshServer")):
                    targets.append(await stack.start(name, [__file__, "--serve-floor", kind]))
            heading(f"ShouldRateLimit, two descriptors, {options.in_flight} in flight: "
                    + ", ".join(target.name for target in targets))
            for number in range(1, options.rounds + 1):
                for target in targets:
                    try:
                        target.rounds.append(await one_round(target, stack.redis_pid, options))
                    except RuntimeError:
                        print(f"{target.name} log:\n{stack.log_tail(target.log)}")
                        raise
                    print_round(target, number, target.rounds[-1])
            counted = {target.name: stack.counted(target.counts_in_redis)
                       for target in targets if target.counts_in_redis}
        finally:
            stack.stop()
    summary(targets, options)
    failed = False
    for target in targets:
        if target.name not in counted:
            continue
        answered = sum(r.answered for r in target.rounds)
        refused = sum(r.refused for r in target.rounds)
        errors = sum((Counter(r.errors) for r in target.rounds), Counter())
        lost = sum(errors.values())  # failed calls: counted or not, depending on when
        exact = 2 * answered <= counted[target.name] <= 2 * (answered + lost)
        failed |= bool(refused) or not exact
        print(f"  check, {target.name}: {answered:,} answers, {refused} refused, failed calls "
              f"{dict(errors) or 'none'}; Redis counted {counted[target.name]:,} = 2 x answers"
              f"{' (+ at most 2 x failed calls)' if lost else ''}: "
              f"{'OK' if exact else 'MISMATCH'}")
    print(f"  load average after: {os.getloadavg()[0]:.2f}")
    if failed:
        raise SystemExit("sanity check failed: every answer must be OK and counted twice")


def main() -> None:
    parser = argparse.ArgumentParser(description="rate limit service benchmark")
    parser.add_argument("--quick", action="store_true", help="2 rounds of 3 s")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="measured per round")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--in-flight", type=int, default=200)
    parser.add_argument("--floor", action="store_true",
                        help="also measure grpc.aio alone and MeshServer alone (constant "
                             "answers, no Redis), rounds alternating with the service's")
    parser.add_argument("--compare", type=Path, metavar="DIR",
                        help="also measure the service from another checkout, rounds "
                             "alternating (e.g. `git archive HEAD | tar -x -C DIR`)")
    parser.add_argument("--client", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--serve-floor", metavar="KIND", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("port", nargs="?", type=int, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.client:
        run_client(options)
        return
    if options.serve_floor:
        serve_floor(options.port, options.serve_floor)
        return
    if options.quick:
        options.rounds, options.seconds = 2, 3.0
    asyncio.run(run(options))


if __name__ == "__main__":
    main()
