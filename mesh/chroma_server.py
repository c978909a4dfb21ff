"""A local Chroma server: the `chroma run` command the chromadb package installs (a Rust
server behind a thin Python entry point), on 127.0.0.1 with its files under `data_dir`.

It needs no network: nothing is downloaded, and anonymized telemetry is switched off in
its environment. The document service reaches it through `LLMMESH_CHROMA_HOST`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HEARTBEAT_PATH = "/api/v2/heartbeat"
# Logged by the server once it has bound its port: ours, not whoever else answers there.
LISTENING = "listening on address"


def find_chroma(override: str | None = None) -> Path:
    """The `chroma` command: `override`, else the one beside this Python, else on PATH."""
    if override:
        return Path(override)
    beside = Path(sys.executable).with_name("chroma")
    if beside.exists():
        return beside
    found = shutil.which("chroma")
    if found is None:
        raise RuntimeError("no `chroma` command: install the chromadb package")
    return Path(found)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PortTaken(RuntimeError):
    """Another process holds the port the server was to bind."""


class LocalChroma:
    """A Chroma server process on 127.0.0.1 with its files under `data_dir`.

    Port 0 picks a free port and, should another process take it before the server binds
    it, picks again (a few times).
    """

    START_ATTEMPTS = 5

    def __init__(self, data_dir: Path, port: int = 0, *, binary: Path | None = None) -> None:
        self.data_dir = data_dir
        self.port = port
        self._choose_port = port == 0
        self.binary = binary or find_chroma()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def process(self) -> subprocess.Popen[bytes] | None:
        return self._process

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def address(self) -> str:
        """`host:port`, the form `LLMMESH_CHROMA_HOST` takes."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def start(self, timeout: float = 30.0) -> None:
        attempts = self.START_ATTEMPTS if self._choose_port else 1
        for attempt in range(attempts):
            if self._choose_port:
                self.port = free_port()
            try:
                self._start_once(timeout)
                return
            except PortTaken:
                if attempt == attempts - 1:
                    raise

    def restart(self, timeout: float = 30.0) -> None:
        """Start again on the same port (clients keep their address), on the same files."""
        self._start_once(timeout)

    def _start_once(self, timeout: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        store = self.data_dir / "db"
        args = [str(self.binary), "run", "--path", str(store), "--host", "127.0.0.1",
                "--port", str(self.port)]
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "NO_COLOR": "1"}
        log_path = self.log_path
        start_of_log = log_path.stat().st_size if log_path.exists() else 0
        log = open(log_path, "ab")  # noqa: SIM115 — owned by the process
        # A session of its own: a Ctrl-C in a terminal reaches the parent only.
        self._process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,  # noqa: S603
                                         stdin=subprocess.DEVNULL, env=env,
                                         start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            logged = _read_from(log_path, start_of_log)
            if self._process.poll() is not None:
                if "is not available" in logged or "in use" in logged.lower():
                    raise PortTaken(f"port {self.port} is taken")
                raise RuntimeError(f"{self.binary} exited; see {log_path}")
            if LISTENING in logged and self._heartbeat():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"chroma did not answer on port {self.port}; see {log_path}")
            time.sleep(0.05)

    def _heartbeat(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + HEARTBEAT_PATH, timeout=1.0) as answer:  # noqa: S310 — our own http URL
                return int(answer.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self, timeout: float = 5.0) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
