"""Process plumbing the service benchmarks share: starting Python children with a log,
reading a process's CPU time and memory from /proc, finding a service's worker
processes, running bounded concurrent loads, and an edge spec that refuses nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gateway.spec import EdgeSpec, Limit, RouteClass  # noqa: E402

T = TypeVar("T")


def start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python *args` in the repository root, stdout and stderr appended to `log`."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)


def wait_port_file(path: Path, process: subprocess.Popen[bytes], log: Path,
                   timeout_s: float = 30.0) -> int:
    """The port a child wrote to `path` once it listens; raises if it exits first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited:\n{log_tail(log)}")
        if path.exists() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.05)
    raise RuntimeError(f"{process.args!r} wrote no port:\n{log_tail(log)}")


def log_tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop_all(processes: list[subprocess.Popen[bytes]], timeout_s: float = 10.0) -> None:
    """SIGTERM every process, then wait for each; SIGKILL what outlives `timeout_s`."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- /proc ------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` (all its threads); 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children...)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    pending = [pid]
    while pending:
        for child in parents.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def listening_pids(port: int, candidates: list[int]) -> list[int]:
    """Those of `candidates` that hold a TCP socket listening on `port`: a service's
    serving processes, whether it forks workers that share one socket or each bind
    their own with SO_REUSEPORT (a supervisor that only forks holds none)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    holders = []
    for pid in candidates:
        try:
            links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
        except OSError:
            continue
        if any(f"socket:[{inode}]" in links for inode in inodes):
            holders.append(pid)
    return holders


# --- load -------------------------------------------------------------------------------


async def run_workers(workers: int, total: int, once: Callable[[int], Awaitable[T]],
                      timeout_s: float) -> list[T]:
    """`total` calls of `once(worker index)` spread over `workers` concurrent loops."""
    results: list[T] = []
    remaining = [total]

    async def worker(index: int) -> None:
        while remaining[0] > 0:
            remaining[0] -= 1
            results.append(await once(index))

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(workers))), timeout_s)
    return results


async def concurrently(workers: int, total: int, once: Callable[[], Awaitable[float]],
                       timeout_s: float = 120.0) -> list[float]:
    """`total` calls of `once` spread over `workers` concurrent loops."""
    return await run_workers(workers, total, lambda _: once(), timeout_s)


# --- the edge ---------------------------------------------------------------------------


def unlimited(spec: EdgeSpec) -> EdgeSpec:
    """`spec` with every rate limit raised out of reach: no request is refused, each one
    still makes the full rate-limit round trip."""
    classes = tuple(RouteClass(c.name, c.key, Limit(10**9, "minute"))
                    for c in spec.route_classes)
    return replace(spec, route_classes=classes, per_user_limit=Limit(10**9, "minute"))
