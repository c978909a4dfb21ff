"""Several worker processes serving one port: the supervisor `run_service` becomes when
LLMMESH_<SERVICE>_WORKERS is above one, and the worker's side of it.

Why: a service's handlers run Python, so one process is bound by one core. The default
count per service, and why, is in services/runtime/config.py (`default_workers`): one per
usable CPU for chat and document (with a Chroma server), one for auth (bcrypt already
runs on every core, off the GIL) and embedding (a model per process; ONNX inference
already runs on every core).

How:
- The supervisor binds the port first (SO_REUSEPORT, not listening, so it never takes a
  connection) and keeps it for the whole run: port 0 resolves here, once, and every
  worker, restarted ones too, binds that same port; a port that another process holds
  fails here, before any worker starts (exit 1).
- Each worker is this same command run again (`sys.orig_argv`), with its index, the
  resolved port and one end of a socket pair in its environment
  (`config.worker_environment`). gRPC binds with SO_REUSEPORT in a worker, so the kernel
  spreads incoming connections over the workers.
- Worker 0 starts first and alone, the others once it is up: whatever a first start
  creates in the data dir (a generated signing key, the embedded stores) is created by
  one process.
- Readiness: a worker binds, starts with gRPC health NOT_SERVING and says "ready" on its
  link; the supervisor answers "serve" to all of them only once every worker is ready.
  So health SERVING, from whichever worker a probe reaches, means all N are up: the
  launcher's and compose's health checks need nothing else. A worker that exits before
  it is ready fails the start: the others are stopped and the supervisor exits 1.
- A worker that dies later is restarted on its own, after a backoff (0.5 s doubling to
  10 s), and marked SERVING once ready; the other workers and their in-flight calls are
  not touched. Five crashes of one worker within 60 s: the supervisor stops every worker
  and exits 1 (the launcher, or the container's restart policy, takes it from there).
- SIGTERM or SIGINT: forwarded to every worker as SIGTERM; each drains its in-flight
  calls (LLMMESH_SHUTDOWN_GRACE_SECONDS) and runs its cleanups; the supervisor waits for
  them (SIGKILL after the grace and a margin) and exits 0. A worker whose supervisor is
  gone (its link reads end-of-file: even a SIGKILLed supervisor closes it) stops the same
  way, so no worker outlives its supervisor.
- Metrics: prometheus_client multiprocess mode. Workers write to a directory made for
  this run (PROMETHEUS_MULTIPROC_DIR) and serve no HTTP; the supervisor serves the sum on
  the service's metrics port, and removes the directory when it exits (or, when it was
  SIGKILLed, the next supervisor to start does).
- Logs: workers write to the supervisor's stdout; each line carries "worker" (its index)
  and "pid".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.multiprocess import mark_process_dead

from services.runtime.config import RuntimeConfig, worker_environment
from services.runtime.metrics import AggregateMetrics

if TYPE_CHECKING:
    from services.runtime.server import MeshServer

log = logging.getLogger("llmmesh.workers")

RESTART_BACKOFF_SECONDS = 0.5
RESTART_BACKOFF_MAX_SECONDS = 10.0
RESTART_LIMIT = 5  # crashes of one worker within RESTART_WINDOW_SECONDS: give up
RESTART_WINDOW_SECONDS = 60.0
# On top of LLMMESH_SHUTDOWN_GRACE_SECONDS before a draining worker is SIGKILLed: its
# cleanups after the drain.
STOP_MARGIN_SECONDS = 3.0
READY = b"ready"
SERVE = b"serve\n"
WILDCARD_HOSTS = {"", "0.0.0.0", "::"}  # noqa: S104
# The run's multiprocess metrics directory, in the temp dir, named after the supervisor's
# pid: one left by a supervisor that was SIGKILLed is removed by the next one to start.
METRICS_DIR_PREFIX = "llmmesh-metrics-"


# --- the worker's side -------------------------------------------------------------------


class _WorkerLabel(logging.Filter):
    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index
        self.pid = os.getpid()

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.index
        record.pid = self.pid
        return True


def label_logs(index: int) -> None:
    """Stamp every log line of this process with its worker index and pid."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerLabel(index))


class SupervisorLink:
    """A worker's link to its supervisor: says when it is ready, is told when to serve,
    and stops the worker when the supervisor is gone."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_config(cls, runtime: RuntimeConfig) -> SupervisorLink:
        if runtime.worker_fd is None:
            raise RuntimeError("a worker needs LLMMESH_WORKER_FD (set by its supervisor)")
        return cls(runtime.worker_fd)

    async def attach(self, server: MeshServer, stop: Callable[[], None]) -> None:
        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=self._fd))
        writer.write(READY + f" {os.getpid()}\n".encode())
        await writer.drain()
        self._task = asyncio.create_task(self._follow(reader, writer, server, stop))

    async def _follow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      server: MeshServer, stop: Callable[[], None]) -> None:
        try:
            while line := await reader.readline():
                if line == SERVE:
                    await server.mark_serving()
        except OSError:
            pass
        log.warning("supervisor gone; stopping")
        writer.close()
        stop()


# --- the supervisor ------------------------------------------------------------------------


def supervise(runtime: RuntimeConfig) -> int:
    """Run `runtime.workers` workers of this service on its port until SIGTERM or SIGINT;
    the process's exit status (0 after a requested stop, 1 when a worker failed to start
    or kept crashing)."""
    try:
        reservation = reserve_port(runtime.listen_host, runtime.port)
    except OSError as error:
        log.error("could not bind", extra={"address": f"{runtime.listen_host}:{runtime.port}",
                                           "error": str(error)})
        return 1
    remove_stale_metrics_dirs()
    metrics_dir = Path(tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-"))
    try:
        return asyncio.run(Supervisor(runtime, reservation.getsockname()[1],
                                      metrics_dir).run())
    finally:
        reservation.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def remove_stale_metrics_dirs(parent: Path | None = None) -> None:
    """Remove the metrics directories of supervisors that are gone."""
    for path in (parent or Path(tempfile.gettempdir())).glob(f"{METRICS_DIR_PREFIX}*-*"):
        pid = path.name.removeprefix(METRICS_DIR_PREFIX).split("-", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # alive, someone else's


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to `host`:`port` with SO_REUSEPORT and not listening: it holds the
    port (0: a free one) for gRPC's SO_REUSEPORT listeners, and takes no connections.
    A wildcard host is reserved as gRPC binds it: dual-stack IPv6, else IPv4."""
    bare = host.strip("[]")
    if bare in WILDCARD_HOSTS:
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]  # noqa: S104
    else:
        info = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM)[0]
        candidates = [(info[0], str(info[4][0]))]
    failure: OSError | None = None
    for family, address in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_INET6 and bare in WILDCARD_HOSTS:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((address, port))
            return sock
        except OSError as error:
            sock.close()
            if error.errno == errno.EADDRINUSE:
                raise
            failure = error
    assert failure is not None
    raise failure


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.returncode is None

    def serve(self) -> None:
        self.writer.write(SERVE)

    def terminate(self) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)

    def close(self) -> None:
        self.writer.close()


class Supervisor:
    """Starts, watches, restarts and stops the workers of one service."""

    def __init__(self, runtime: RuntimeConfig, port: int, metrics_dir: Path) -> None:
        self.runtime = runtime
        self.port = port
        self.metrics_dir = metrics_dir
        self.command = [sys.executable, *sys.orig_argv[1:]]
        self.workers: dict[int, Worker] = {}
        self.failed = False
        self._serving = False  # every worker was up once
        self._stopping = asyncio.Event()
        self._metrics: AggregateMetrics | None = None

    @property
    def address(self) -> str:
        return f"{self.runtime.listen_host}:{self.port}"

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.request_stop)
        try:
            if self.runtime.metrics_port:
                self._metrics = AggregateMetrics(self.metrics_dir, self.runtime.listen_host,
                                                 self.runtime.metrics_port)
            if not await self._start_all():
                await self._stop_workers([])
                return 1 if self.failed else 0  # else a stop came while starting
            self._serving = True
            for worker in self.workers.values():
                worker.serve()
            log.info("serving", extra={
                "address": self.address, "workers": len(self.workers),
                "worker_pids": [self.workers[i].pid for i in sorted(self.workers)],
                "metrics_port": self._metrics.port if self._metrics else None})
            keepers = [asyncio.create_task(self._keep(index)) for index in self.workers]
            await self._stopping.wait()
            await self._stop_workers(keepers)
            return 1 if self.failed else 0
        finally:
            if self._metrics is not None:
                self._metrics.close()

    async def _start_all(self) -> bool:
        """Worker 0, then the others together; False when one failed or a stop came."""
        if await self._start(0) is None:
            return False
        started = await asyncio.gather(*(self._start(index)
                                         for index in range(1, self.runtime.workers)))
        return all(worker is not None for worker in started)

    async def _start(self, index: int) -> Worker | None:
        """Spawn worker `index` and wait until it says it is ready; None when it exited
        first (logged, `failed` set during the first start) or a stop was requested."""
        parent, child = socket.socketpair()
        try:
            env = worker_environment(self.runtime, index, self.port, child.fileno(),
                                     self.metrics_dir)
            process = await asyncio.create_subprocess_exec(
                *self.command, env=env, pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL)
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        worker = self.workers[index] = Worker(index, process, reader, writer)
        if self._stopping.is_set():
            worker.terminate()
            return None
        ready = asyncio.ensure_future(reader.readline())
        stop = asyncio.ensure_future(self._stopping.wait())
        await asyncio.wait({ready, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not ready.done():
            ready.cancel()
        elif ready.exception() is None and ready.result().startswith(READY):
            return worker
        if self._stopping.is_set():
            return None
        code = await process.wait()  # the link closed: the worker has exited
        if not self._serving:  # a restart that fails is a crash, counted by _keep
            log.error("worker failed to start", extra={
                "worker": index, "pid": worker.pid, "exit_code": code})
            self.failed = True
            self.request_stop()
        return None

    async def _keep(self, index: int) -> None:
        """Restart worker `index` whenever it dies, until the supervisor stops."""
        crashes: list[float] = []
        while True:
            worker = self.workers[index]
            code = await worker.process.wait()
            if self._stopping.is_set():
                return
            self._forget(worker)
            now = time.monotonic()
            crashes = [t for t in crashes if now - t < RESTART_WINDOW_SECONDS] + [now]
            if len(crashes) >= RESTART_LIMIT:
                log.error("worker keeps crashing; stopping the service", extra={
                    "worker": index, "pid": worker.pid, "exit_code": code,
                    "crashes": len(crashes), "window_seconds": RESTART_WINDOW_SECONDS})
                self.failed = True
                self.request_stop()
                return
            delay = min(RESTART_BACKOFF_SECONDS * 2 ** (len(crashes) - 1),
                        RESTART_BACKOFF_MAX_SECONDS)
            log.error("worker exited; restarting it", extra={
                "worker": index, "pid": worker.pid, "exit_code": code,
                "restart_in_seconds": delay, "attempt": len(crashes)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
                return
            restarted = await self._start(index)
            if restarted is not None:
                restarted.serve()
                log.info("worker restarted", extra={"worker": index, "pid": restarted.pid,
                                                    "address": self.address})

    def _forget(self, worker: Worker) -> None:
        """A worker has exited: drop its link and its live gauges."""
        worker.close()
        mark_process_dead(worker.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    async def _stop_workers(self, keepers: list[asyncio.Task[None]]) -> None:
        """SIGTERM every worker, wait for its drain (SIGKILL after the grace), and for
        the keepers (which return once their worker has exited)."""
        running = [worker for worker in self.workers.values() if worker.running()]
        if running:
            log.info("stopping workers", extra={"pids": [w.pid for w in running]})
        for worker in running:
            worker.terminate()
        grace = self.runtime.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        waits = [asyncio.ensure_future(w.process.wait()) for w in self.workers.values()]
        if waits:
            await asyncio.wait(waits, timeout=grace)
        for worker in self.workers.values():
            if worker.running():
                log.warning("worker did not stop in time; killing it",
                            extra={"worker": worker.index, "pid": worker.pid,
                                   "grace_seconds": grace})
                with contextlib.suppress(ProcessLookupError):
                    worker.process.kill()
        for worker in self.workers.values():
            await worker.process.wait()
            self._forget(worker)
        await asyncio.gather(*keepers, return_exceptions=True)
        codes = {worker.index: worker.process.returncode for worker in self.workers.values()}
        log.info("stopped workers", extra={"exit_codes": codes})
