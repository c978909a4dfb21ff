"""Helpers for the fault suite: services as real processes (`python -m services.<name>`,
the way the launcher runs them), chat streams read event by event, and a user's usage
read back from auth."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from mesh.redis_server import free_port
from services.chat.tokens import count_tokens
from tests.conftest import SERVICE_TOKEN
from tests.helpers import LoggedIn

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "chat", "document", "embedding")


def hold_step(max_tokens: int) -> int:
    """How far a stream may run ahead of its last checkpoint: one hold extension."""
    return max(64, max_tokens // 4)


def long_reply(words: int, tokens_per_word: int = 1) -> Callable[[object], str]:
    """A scripted reply of `words` words, each `tokens_per_word` local tokens (1 or 2)
    with its leading space (count_tokens: four bytes a token)."""
    stem = "w" if tokens_per_word == 1 else "wrd"
    text = " ".join(f"{stem}{n % 100:02d}" for n in range(words))
    return lambda _messages: text


def process_env(data_dir: Path, redis_url: str, **extra: str) -> dict[str, str]:
    """The environment the launcher gives its children: every service on a free port
    (so each finds its peers), no metrics, fast bcrypt, a short shutdown grace."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("LLMMESH_")}
    env.update({
        "LLMMESH_DATA_DIR": str(data_dir),
        "LLMMESH_REDIS_URL": redis_url,
        "LLMMESH_SERVICE_TOKEN": SERVICE_TOKEN,
        "LLMMESH_AUTH_BCRYPT_COST": "4",
        "LLMMESH_SHUTDOWN_GRACE_SECONDS": "2",
    })
    for service in SERVICES:
        env[f"LLMMESH_{service.upper()}_PORT"] = str(free_port())
        env[f"LLMMESH_{service.upper()}_METRICS_PORT"] = "0"
        # One process per service: a SIGKILL must hit the process serving the calls.
        env[f"LLMMESH_{service.upper()}_WORKERS"] = "1"
    env.update(extra)
    return env


class ServiceProcess:
    """One service as its own process, its output in `<log_dir>/<name>.log`."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_path = log_dir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.env[f'LLMMESH_{self.name.upper()}_PORT']}"

    @property
    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def spawn(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", f"services.{self.name}"], cwd=ROOT, env=self.env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def start(self, within: float = 60.0) -> None:
        """Spawn it and wait until it reports SERVING."""
        self.spawn()
        assert self.process is not None
        deadline = time.monotonic() + within
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while True:
                if self.process.poll() is not None:
                    raise AssertionError(f"{self.name} exited with {self.process.returncode}:"
                                         f"\n{self.log[-3000:]}")
                try:
                    answer = await health.Check(  # type: ignore[attr-defined]
                        health_pb2.HealthCheckRequest(), timeout=1)
                    if answer.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.aio.AioRpcError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"{self.name} not SERVING in {within:g} s:\n"
                                         f"{self.log[-3000:]}")
                await asyncio.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL, as a crash: no drain, no cleanup."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace; safe to call on a dead process."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


@dataclass
class StreamOutcome:
    """How one StreamChat call ended, as its client saw it."""

    deltas: list[str] = field(default_factory=list)
    done: chat_pb2.StreamDone | None = None
    error_event: status_pb2.Status | None = None
    status: grpc.StatusCode | None = None  # the RPC's own error, if it failed
    details: str = ""
    started: bool = False
    turn: str = ""  # the turn's name (StreamStart.turn), to resume it

    @property
    def completion_tokens(self) -> int:
        """Chat's own count of what this client received (count_tokens over the whole
        delivered text: deltas may be coalesced, so chat never counts per delta)."""
        return count_tokens("".join(self.deltas))

    @property
    def error_code(self) -> grpc.StatusCode | None:
        """The failure's code: an error event's, else the RPC status'."""
        if self.error_event is not None:
            return _code(self.error_event.code)
        return self.status

    def delivered(self, prompt_tokens: int) -> int:
        """Tokens delivered: the prompt (once anything was) and every delta received."""
        if self.done is not None:
            return self.done.usage.total_tokens
        return prompt_tokens + self.completion_tokens if self.deltas else 0

    def describe(self) -> str:
        end = ("done " + chat_pb2.FinishReason.Name(self.done.finish_reason) if self.done
               else f"error event {self.error_code}" if self.error_event is not None
               else f"status {self.status} {self.details!r}" if self.status
               else "no end")
        return f"{len(self.deltas)} deltas, {end}"


def _code(value: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == value:
            return code
    raise AssertionError(f"unknown status code {value}")


async def stream_chat(chat: chat_pb2_grpc.ChatServiceStub, user: LoggedIn, message: str,
                      max_tokens: int, *, deadline: float,
                      on_delta: Callable[[int], None] = lambda _count: None) -> StreamOutcome:
    """Read one StreamChat to its end; `on_delta(n)` after the n-th delta."""
    outcome = StreamOutcome()
    call = chat.StreamChat(chat_pb2.StreamChatRequest(
        message=message, options=chat_pb2.ChatOptions(max_tokens=max_tokens)),
        metadata=user.metadata, timeout=deadline)
    try:
        async for event in call:
            kind = event.WhichOneof("event")
            if kind == "start":
                outcome.started = True
                outcome.turn = event.start.turn
            elif kind == "delta":
                outcome.deltas.append(event.delta.text)
                on_delta(len(outcome.deltas))
            elif kind == "done":
                outcome.done = event.done
            elif kind == "error":
                outcome.error_event = event.error
    except grpc.aio.AioRpcError as error:
        outcome.status, outcome.details = error.code(), error.details() or ""
    return outcome


async def usage(auth: auth_pb2_grpc.AuthServiceStub, user: LoggedIn) -> auth_pb2.Usage:
    return await auth.GetUsage(auth_pb2.GetUsageRequest(name="users/me/usages/current"),
                               metadata=user.metadata, timeout=10)


def model_entry(base_url: str, max_output_tokens: int = 1024) -> dict[str, object]:
    """The stub as chat's default model (an OpenAI-compatible endpoint)."""
    return {"id": "stub", "provider": "openai", "model": "stub-1", "base_url": base_url,
            "api_key": "test-key", "max_output_tokens": max_output_tokens,
            "default_max_tokens": 64, "default": True}
