"""Helpers the benchmarks share: percentiles, headings, service processes."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import time
from collections.abc import Callable, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile, `fraction` in 0..1 (0.5 = median, 0.99 = p99)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = max(1, math.ceil(round(fraction * len(ordered), 9)))
    return ordered[min(rank, len(ordered)) - 1]


def heading(title: str) -> None:
    print()
    print(title)
    print("-" * len(title), flush=True)


async def wait_serving(address: str, process: subprocess.Popen[bytes], timeout_s: float,
                       what: str, log_tail: Callable[[], str]) -> None:
    """Poll gRPC health at `address` until SERVING; raise if `process` exits or time runs
    out (with the end of its log)."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while True:
            if process.poll() is not None:
                raise ProcessExited(f"{what} exited:\n{log_tail()}")
            try:
                # types-grpcio-health-checking's HealthStub declares no methods (the
                # generated class sets them in __init__).
                reply = await health.Check(  # type: ignore[attr-defined]
                    health_pb2.HealthCheckRequest(), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} not SERVING:\n{log_tail()}")
            await asyncio.sleep(0.1)


def stop_process(process: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """SIGTERM (graceful drain), then SIGKILL after `timeout_s`."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class ProcessExited(RuntimeError):
    """A benchmarked process ended before it answered SERVING."""
