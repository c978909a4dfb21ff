"""Several worker processes on one port (services/runtime/workers.py), with the real auth
service (`python -m services.auth`, LLMMESH_AUTH_WORKERS=2, port 0): the supervisor picks
the port, health says SERVING once both workers are up, calls land on both workers (each
log line names its worker's pid), the metrics port sums them, a SIGKILLed worker comes
back while the other keeps answering, SIGTERM drains both and leaves no process behind,
and a worker that cannot start fails the service.

Also the defaults: how many workers each service runs, and why (services/runtime/config.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from mesh.redis_server import LocalRedis, free_port
from services.runtime.config import (
    ConfigError,
    Env,
    RuntimeConfig,
    default_workers,
    service_workers,
    usable_cpus,
)
from services.runtime.workers import METRICS_DIR_PREFIX, remove_stale_metrics_dirs
from tests.conftest import SERVICE_TOKEN
from tests.helpers import stop_process

ROOT = Path(__file__).resolve().parents[2]
CALLS_PER_CHANNEL = 4
CHANNELS = 16


class Service:
    """`python -m services.auth` as a subprocess; its JSON log lines collected."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "services.auth"], cwd=ROOT,
                                        env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.lines: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.raw.append(line.rstrip("\n"))
                with contextlib.suppress(ValueError):  # a traceback
                    self.lines.append(json.loads(line))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.raw)

    def expect(self, message: str, timeout: float, after: int = 0,
               **fields: Any) -> dict[str, Any]:
        """The first log line from index `after` on with this message and these fields."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[after:]:
                    if line.get("message") == message and all(
                            line.get(key) == value for key, value in fields.items()):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    raise AssertionError(f"no {message!r} {fields} in:\n{self.output}")
                self._changed.wait(min(left, 0.5))

    def stop(self) -> None:
        stop_process(self.process, signal.SIGTERM, self._reader)


def auth_env(redis_server: LocalRedis, data_dir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "LLMMESH_DATA_DIR": str(data_dir),
            "LLMMESH_REDIS_URL": redis_server.url, "LLMMESH_SERVICE_TOKEN": SERVICE_TOKEN,
            "LLMMESH_AUTH_PORT": "0", "LLMMESH_AUTH_METRICS_PORT": str(free_port()),
            "LLMMESH_AUTH_BCRYPT_COST": "4", "LLMMESH_SHUTDOWN_GRACE_SECONDS": "2",
            "LLMMESH_LOG_LEVEL": "INFO", **extra}


@pytest.fixture(scope="module")
def two_workers(redis_server: LocalRedis,
                tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """Auth with two workers; the module's tests run in order, the last one stops it."""
    env = auth_env(redis_server, tmp_path_factory.mktemp("workers"), LLMMESH_AUTH_WORKERS="2")
    service = Service(env)
    try:
        service.expect("serving", 30, workers=2)
        yield service
    finally:
        service.stop()


def test_two_workers_serve_one_port(two_workers: Service) -> None:
    serving = two_workers.expect("serving", 1, workers=2)
    address = serving["address"]
    assert address.startswith("127.0.0.1:") and not address.endswith(":0")
    pids = set(serving["worker_pids"])
    assert len(pids) == 2 and pids == children(two_workers.process.pid)
    # Health SERVING (whichever worker answers) only once both said they were ready.
    assert health(address) == health_pb2.HealthCheckResponse.SERVING
    for pid in pids:
        started = two_workers.expect("started", 1, pid=pid)
        assert started["address"] == address  # one port, which port 0 chose once

    # Each channel its own TCP connection; the kernel spreads connections over the
    # workers, and the log line of every call names the worker that served it.
    mark = len(two_workers.lines)
    calls = call_jwks(address, CHANNELS, CALLS_PER_CHANNEL)
    served_by = rpc_pids(two_workers, mark, calls)
    assert set(served_by) == pids, served_by
    # The metrics port serves the sum over both workers.
    metrics = scrape(serving["metrics_port"])
    assert metric(metrics, "llmmesh_grpc_server_handling_seconds_count",
                  grpc_method="GetJwks", grpc_code="OK") == calls
    assert metric(metrics, "llmmesh_grpc_server_in_flight", grpc_method="GetJwks") == 0


def test_a_killed_worker_is_restarted_and_the_other_keeps_answering(
        two_workers: Service) -> None:
    serving = two_workers.expect("serving", 1, workers=2)
    address = serving["address"]
    victim, survivor = serving["worker_pids"]
    mark = len(two_workers.lines)
    os.kill(victim, signal.SIGKILL)
    crashed = two_workers.expect("worker exited; restarting it", 10, mark, pid=victim)
    assert crashed["exit_code"] == -signal.SIGKILL and crashed["attempt"] == 1
    # While it is away, the other worker answers (new connections go to it).
    assert call_jwks(address, 4, 1) == 4
    restarted = two_workers.expect("worker restarted", 30, mark, worker=crashed["worker"])
    assert restarted["pid"] not in {victim, survivor}
    assert children(two_workers.process.pid) == {restarted["pid"], survivor}
    assert health(address) == health_pb2.HealthCheckResponse.SERVING
    mark = len(two_workers.lines)
    calls = call_jwks(address, CHANNELS, CALLS_PER_CHANNEL)
    assert set(rpc_pids(two_workers, mark, calls)) == {restarted["pid"], survivor}
    # Counters survive the dead worker: the first test's calls, these, the four above.
    total = metric(scrape(serving["metrics_port"]), "llmmesh_grpc_server_handling_seconds_count",
                   grpc_method="GetJwks", grpc_code="OK")
    assert total == 2 * CHANNELS * CALLS_PER_CHANNEL + 4


def test_sigterm_drains_every_worker_and_leaves_none(two_workers: Service) -> None:
    pids = children(two_workers.process.pid)
    assert len(pids) == 2
    mark = len(two_workers.lines)
    started = time.monotonic()
    two_workers.process.send_signal(signal.SIGTERM)
    assert two_workers.process.wait(15) == 0, two_workers.output
    assert time.monotonic() - started < 10
    two_workers._reader.join(5)
    # Each worker took the graceful path (health NOT_SERVING, drain, cleanups) and exited 0.
    for pid in pids:
        two_workers.expect("stopping", 1, mark, pid=pid)
    stopped = two_workers.expect("stopped workers", 1, mark)
    assert set(stopped["exit_codes"].values()) == {0}
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"


def test_a_worker_that_cannot_start_fails_the_service(redis_server: LocalRedis,
                                                       tmp_path: Path) -> None:
    # The config is fine for the supervisor; only building the server (in the worker)
    # reads the key.
    env = auth_env(redis_server, tmp_path, LLMMESH_AUTH_WORKERS="2",
                   LLMMESH_AUTH_SIGNING_KEY="not a PEM key")
    service = Service(env)
    try:
        assert service.process.wait(30) == 1, service.output
    finally:
        service.stop()
    failed = service.expect("worker failed to start", 1, worker=0)
    assert failed["exit_code"] == 1
    assert not Path(f"/proc/{failed['pid']}").exists()
    assert not any(line.get("message") == "serving" for line in service.lines)


def test_a_taken_port_fails_before_any_worker_starts(redis_server: LocalRedis,
                                                     tmp_path: Path) -> None:
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        service = Service(auth_env(redis_server, tmp_path, LLMMESH_AUTH_WORKERS="2",
                                   LLMMESH_AUTH_PORT=str(port)))
        try:
            assert service.process.wait(30) == 1, service.output
        finally:
            service.stop()
    service.expect("could not bind", 1, address=f"127.0.0.1:{port}")
    assert not any(line.get("message") == "started" for line in service.lines)


def test_one_worker_is_the_process_itself(redis_server: LocalRedis, tmp_path: Path) -> None:
    service = Service(auth_env(redis_server, tmp_path, LLMMESH_AUTH_WORKERS="1"))
    try:
        serving = service.expect("serving", 30)
        assert "worker" not in serving and "workers" not in serving
        assert children(service.process.pid) == set()
        assert health(serving["address"]) == health_pb2.HealthCheckResponse.SERVING
    finally:
        service.stop()
    assert service.process.returncode == 0


# --- the defaults ---------------------------------------------------------------------------


def test_default_worker_counts(tmp_path: Path) -> None:
    cpus = usable_cpus()
    assert cpus >= 1
    env = Env({})
    assert default_workers(env, "chat") == cpus  # Python-bound handlers: one per CPU
    assert default_workers(env, "auth") == 1  # bcrypt runs off the GIL already
    assert default_workers(env, "embedding") == 1  # a model per process
    assert default_workers(env, "document") == 1  # the embedded Chroma store is one process's
    assert default_workers(Env({"LLMMESH_CHROMA_HOST": "chroma:8000"}), "document") == cpus
    runtime = RuntimeConfig.from_env("chat", Env({"LLMMESH_DATA_DIR": str(tmp_path),
                                                  "LLMMESH_CHAT_WORKERS": "3"}))
    assert (runtime.workers, runtime.worker_index, runtime.worker_fd) == (3, None, None)


def test_worker_counts_are_checked() -> None:
    assert service_workers(Env({"LLMMESH_AUTH_WORKERS": " 4 "}), "auth") == 4
    for bad in ("0", "65", "two"):
        with pytest.raises(ConfigError, match="LLMMESH_CHAT_WORKERS"):
            service_workers(Env({"LLMMESH_CHAT_WORKERS": bad}), "chat")
    with pytest.raises(ConfigError, match="LLMMESH_CHROMA_HOST"):
        service_workers(Env({"LLMMESH_DOCUMENT_WORKERS": "2"}), "document")
    assert service_workers(Env({"LLMMESH_DOCUMENT_WORKERS": "2",
                                "LLMMESH_CHROMA_HOST": "chroma:8000"}), "document") == 2


@pytest.mark.parametrize(("cpu_max", "cap"), [("max 100000", None), ("150000 100000", 2),
                                              ("50000 100000", 1), ("garbage", None)])
def test_a_cgroup_cpu_quota_caps_the_cpus(tmp_path: Path, cpu_max: str, cap: int | None) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max + "\n")
    mask = len(os.sched_getaffinity(0))
    assert usable_cpus(path) == (mask if cap is None else min(mask, cap))
    assert usable_cpus(tmp_path / "absent") == mask


# --- helpers ------------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True,
                           check=False).stdout.split()
    return {int(child) for child in found if not _is_zombie(child)}


def _is_zombie(pid: str) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        answer = health_pb2_grpc.HealthStub(channel).Check(  # type: ignore[attr-defined]
            health_pb2.HealthCheckRequest(), timeout=5)
    return int(answer.status)


def call_jwks(address: str, channels: int, calls: int) -> int:
    """`calls` GetJwks on each of `channels` channels, each on a TCP connection of its
    own (no subchannel sharing); the number of calls answered."""
    answered = 0
    opened = [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
              for _ in range(channels)]
    try:
        for channel in opened:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            for _ in range(calls):
                stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=10, wait_for_ready=True)
                answered += 1
    finally:
        for channel in opened:
            channel.close()
    return answered


def rpc_pids(service: Service, after: int, calls: int) -> dict[int, int]:
    """pid -> how many of the `calls` GetJwks calls since line `after` it served."""
    service.expect("rpc", 5, after, method="/llmmesh.auth.v1.AuthService/GetJwks")
    deadline = time.monotonic() + 5
    while True:
        lines = [line for line in service.lines[after:] if line.get("message") == "rpc"
                 and line.get("method") == "/llmmesh.auth.v1.AuthService/GetJwks"]
        if len(lines) >= calls or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(lines) == calls, service.output
    served: dict[int, int] = {}
    for line in lines:
        served[line["pid"]] = served.get(line["pid"], 0) + 1
    return served


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of `name` over the series whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{key}="{wanted}"' in series for key, wanted in labels.items()):
            total += float(value)
    return total


def test_metrics_dirs_of_gone_supervisors_are_removed(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f"{METRICS_DIR_PREFIX}{gone.pid}-abc"
    live = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "llmmesh-something-else"
    for path in (stale, live, other):
        path.mkdir()
    remove_stale_metrics_dirs(tmp_path)
    assert not stale.exists() and live.exists() and other.exists()
