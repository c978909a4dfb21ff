"""Server streams through the edge as Server-Sent Events (Envoy's
`stream_sse_style_delimited`), and a client that leaves cancels the upstream call."""

from __future__ import annotations

import asyncio
import time
import uuid

import aiohttp


async def test_sse_framing(http: aiohttp.ClientSession, edge_url: str) -> None:
    async with http.post(f"{edge_url}/v1/stream", json={"count": 3}) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        body = await response.read()
    assert body == (b'data: {"text":"event 0"}\n\n'
                    b'data: {"index":1,"text":"event 1"}\n\n'
                    b'data: {"index":2,"text":"event 2"}\n\n')


async def test_an_empty_stream_is_an_empty_200(http: aiohttp.ClientSession,
                                               edge_url: str) -> None:
    async with http.post(f"{edge_url}/v1/stream", json={"count": 0}) as response:
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        assert await response.read() == b""


async def test_frames_arrive_as_they_are_sent(http: aiohttp.ClientSession,
                                              edge_url: str) -> None:
    started = time.monotonic()
    async with http.post(f"{edge_url}/v1/stream",
                         json={"count": 3, "intervalMs": 300}) as response:
        first = await response.content.readuntil(b"\n\n")
        first_at = time.monotonic() - started
        rest = await response.read()
        done_at = time.monotonic() - started
    assert first == b'data: {"text":"event 0"}\n\n'
    assert rest.count(b"data: ") == 2
    assert first_at < 0.5 < done_at, (first_at, done_at)


async def test_an_error_before_the_first_message_is_an_http_error(
        http: aiohttp.ClientSession, edge_url: str) -> None:
    async with http.post(f"{edge_url}/v1/stream",
                         json={"count": 3, "failAfter": -1, "failCode": 8}) as response:
        assert response.status == 429
        assert (await response.json())["code"] == 8


async def test_an_error_mid_stream_can_only_end_it(http: aiohttp.ClientSession,
                                                   edge_url: str) -> None:
    async with http.post(f"{edge_url}/v1/stream",
                         json={"count": 5, "failAfter": 2, "failCode": 13}) as response:
        assert response.status == 200
        body = await response.read()
    assert body.count(b"data: ") == 2 and body.endswith(b"\n\n")


async def test_a_client_that_disconnects_cancels_the_upstream_call(edge_url: str) -> None:
    tag = uuid.uuid4().hex
    async with aiohttp.ClientSession() as own:
        response = await own.post(f"{edge_url}/v1/stream",
                                   json={"count": 100, "intervalMs": 100, "tag": tag})
        assert response.status == 200
        await response.content.readuntil(b"\n\n")
        response.close()  # drop the connection mid-stream
    async with aiohttp.ClientSession() as checker:
        for _ in range(50):  # up to ~5 s
            async with checker.get(f"{edge_url}/v1/cancelled/{tag}") as answer:
                state = await answer.json()
            if state.get("cancelled"):
                break
            await asyncio.sleep(0.1)
    assert state == {"started": True, "cancelled": True}
