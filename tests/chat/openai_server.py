"""An OpenAI-compatible chat completions server for tests and benchmarks.

Real HTTP and Server-Sent Events (aiohttp) on 127.0.0.1, so the real `ChatOpenAI`
client talks to it. It streams a scripted reply one word per event, honours
`max_completion_tokens`/`max_tokens` (unless told not to), reports usage when asked
(`stream_options.include_usage`), can answer 429/500/503 or be slow, and records each
request: its body, when it started, how many tokens it sent and when the client went
away (aiohttp cancels the handler when the connection drops).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


def words(text: str) -> list[str]:
    """The reply's tokens: words with their leading space."""
    parts = text.split(" ")
    return [parts[0], *(f" {part}" for part in parts[1:])] if text else []


def count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The server's own prompt count: words plus 4 per message."""
    return sum(len(str(m.get("content", "")).split()) + 4 for m in messages)


def echo(messages: list[dict[str, Any]]) -> str:
    """Default reply: repeats the last user message."""
    last = next((m for m in reversed(messages) if m.get("role") == "user"), {})
    return f"You said: {last.get('content', '')}"


@dataclass
class Script:
    """How the server answers the next requests."""

    reply: Callable[[list[dict[str, Any]]], str] = echo
    token_delay: float = 0.0  # seconds between tokens
    first_token_delay: float = 0.0
    status: int = 200  # 429, 500, 503... answer an error instead
    retry_after: str | None = None
    ignore_max_tokens: bool = False  # keep streaming past max_tokens
    fail_after_tokens: int | None = None  # drop the connection after this many tokens
    report_usage: bool = True
    tokens_per_event: int = 1  # servers that batch tokens send several per event
    gate: asyncio.Event | None = None  # no token before the test opens it


@dataclass
class Seen:
    """One request as the server saw it."""

    body: dict[str, Any]
    headers: dict[str, str]
    started: float
    tokens_sent: int = 0
    finished: float | None = None
    disconnected: float | None = None
    first_token_at: float | None = None


@dataclass
class OpenAIServer:
    """Start with `await start()`; `base_url` is then the `/v1` root."""

    script: Script = field(default_factory=Script)
    by_model: dict[str, Script] = field(default_factory=dict)  # overrides `script`
    seen: list[Seen] = field(default_factory=list)
    record: bool = True
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def reset(self, script: Script | None = None) -> None:
        self.script = script or Script()
        self.seen.clear()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        seen = Seen(body=body, headers=dict(request.headers), started=time.monotonic())
        if self.record:
            self.seen.append(seen)
        script = self.by_model.get(request_model(body), self.script)
        if script.status != 200:
            headers = {"retry-after": script.retry_after} if script.retry_after else {}
            error = {"error": {"message": f"scripted {script.status}", "type": "test",
                               "code": str(script.status)}}
            return web.json_response(error, status=script.status, headers=headers)
        messages = body.get("messages", [])
        tokens = words(script.reply(messages))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if limit is not None and len(tokens) > limit and not script.ignore_max_tokens:
            tokens, finish = tokens[:limit], "length"
        usage = {"prompt_tokens": count_prompt_tokens(messages),
                 "completion_tokens": len(tokens)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            return await self._whole(request, seen, script, tokens, finish, usage)
        return await self._stream(request, seen, script, tokens, finish, usage)

    async def _whole(self, request: web.Request, seen: Seen, script: Script,
                     tokens: list[str], finish: str, usage: dict[str, int]) -> web.StreamResponse:
        """A non-streamed answer, generated as slowly as the script's stream would be."""
        try:
            if script.gate is not None:
                await script.gate.wait()
            if script.first_token_delay:
                await asyncio.sleep(script.first_token_delay)
            if script.token_delay and len(tokens) > 1:
                await asyncio.sleep(script.token_delay * (len(tokens) - 1))
            if script.fail_after_tokens is not None and script.fail_after_tokens < len(tokens):
                request.transport.close()  # type: ignore[union-attr]
                return web.StreamResponse()
        except asyncio.CancelledError:
            seen.disconnected = time.monotonic()
            raise
        seen.tokens_sent = len(tokens)
        seen.first_token_at = seen.finished = time.monotonic()
        return web.json_response(_completion(request_model(seen.body), "".join(tokens), finish,
                                             usage if script.report_usage else None))

    async def _stream(self, request: web.Request, seen: Seen, script: Script,
                      tokens: list[str], finish: str, usage: dict[str, int]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"content-type": "text/event-stream",
                                               "cache-control": "no-cache"})
        await response.prepare(request)
        ident = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        model = request_model(seen.body)
        try:
            if script.gate is not None:
                await script.gate.wait()
            if script.first_token_delay:
                await asyncio.sleep(script.first_token_delay)
            await response.write(_event(_chunk(ident, model, {"role": "assistant",
                                                              "content": ""})))
            step = script.tokens_per_event
            for index in range(0, len(tokens), step):
                if script.token_delay and index:
                    await asyncio.sleep(script.token_delay)
                if script.fail_after_tokens is not None and index >= script.fail_after_tokens:
                    request.transport.close()  # type: ignore[union-attr]
                    return response
                text = "".join(tokens[index:index + step])
                await response.write(_event(_chunk(ident, model, {"content": text})))
                seen.tokens_sent += len(tokens[index:index + step])
                if seen.first_token_at is None:
                    seen.first_token_at = time.monotonic()
            await response.write(_event(_chunk(ident, model, {}, finish)))
            include_usage = (seen.body.get("stream_options") or {}).get("include_usage")
            if include_usage and script.report_usage:
                await response.write(_event({"id": ident, "object": "chat.completion.chunk",
                                             "created": int(time.time()), "model": model,
                                             "choices": [], "usage": usage}))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
            seen.finished = time.monotonic()
        except (asyncio.CancelledError, ConnectionResetError):
            seen.disconnected = time.monotonic()
            raise
        return response


def request_model(body: dict[str, Any]) -> str:
    return str(body.get("model", "test-model"))


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _chunk(ident: str, model: str, delta: dict[str, Any],
           finish: str | None = None) -> dict[str, Any]:
    return {"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def _completion(model: str, text: str, finish: str,
                usage: dict[str, int] | None) -> dict[str, Any]:
    completion: dict[str, Any] = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}", "object": "chat.completion",
        "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": text}}]}
    if usage is not None:
        completion["usage"] = usage
    return completion
