"""`run_service`, the body of every service's `main()`: JSON logs under the service's
name, a server built by a coroutine inside the loop, a graceful stop on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.conftest import SERVICE_TOKEN

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import asyncio
from dataclasses import dataclass

from services.runtime.authn import AccessPolicy
from services.runtime.config import Env, RuntimeConfig
from services.runtime.server import MeshServer, ServiceSpec, build_verifier, run_service


@dataclass(frozen=True)
class ProbeConfig:
    runtime: RuntimeConfig


async def no_keys():
    return {"keys": []}


async def create(config):
    await asyncio.sleep(0)  # as a service that loads its models first
    spec = ServiceSpec(names=[], register=lambda server: None, policy=AccessPolicy.build())
    return MeshServer(config.runtime, spec, build_verifier(config.runtime, no_keys))


run_service(lambda: ProbeConfig(RuntimeConfig.from_env("embedding", Env())), create)
"""


def test_serves_under_its_name_and_stops_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "LLMMESH_DATA_DIR": str(tmp_path), "LLMMESH_SERVICE_TOKEN": SERVICE_TOKEN,
           "LLMMESH_EMBEDDING_PORT": "0", "LLMMESH_EMBEDDING_METRICS_PORT": "0",
           "LLMMESH_LOG_LEVEL": "info", "LLMMESH_SHUTDOWN_GRACE_SECONDS": "1"}
    process = subprocess.Popen([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    try:
        first = json.loads(process.stdout.readline())
        assert (first["message"], first["service"], first["severity"]) == (
            "serving", "embedding", "INFO")
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, rest
    assert [json.loads(line)["message"] for line in rest.splitlines()] == ["stopping"]
