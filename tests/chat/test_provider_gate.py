"""The provider gate with the real ChatOpenAI client (as the registry builds it) and the
OpenAI-compatible test server: a model request prepared before its turn's hold is
granted leaves only once it is, and never when the hold is refused."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.messages import HumanMessage
from pydantic import SecretStr

from services.chat import provider_gate
from services.chat.config import ModelSpec
from services.chat.registry import build_model
from services.runtime.errors import ResourceExhausted
from tests.chat.openai_server import OpenAIServer


def _model(model_server: OpenAIServer):  # type: ignore[no-untyped-def]
    spec = ModelSpec(id="gated", provider="openai", base_url=model_server.base_url,
                     api_key=SecretStr("k"), max_retries=2)

    async def no_embeddings(texts: object) -> list[list[float]]:
        raise AssertionError("not used")

    return build_model(spec, no_embeddings)  # type: ignore[arg-type]


async def _settle(rounds: int = 50) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0.002)


@pytest.mark.parametrize("streamed", [True, False], ids=["astream", "ainvoke"])
async def test_the_request_waits_for_the_hold_and_then_goes(
        model_server: OpenAIServer, streamed: bool) -> None:
    model = _model(model_server)
    hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def call() -> str:
        if streamed:
            return "".join([str(chunk.content) async for chunk in model.astream(
                [HumanMessage("hello")])])
        return str((await model.ainvoke([HumanMessage("hello")])).content)

    with provider_gate.gate(hold):
        task = asyncio.create_task(call())
    await _settle()
    assert model_server.seen == [] and not task.done()  # prepared, not sent
    hold.set_result(None)
    assert await task == "You said: hello"
    assert len(model_server.seen) == 1


async def test_a_refused_hold_sends_nothing_even_with_client_retries(
        model_server: OpenAIServer) -> None:
    model = _model(model_server)
    hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with provider_gate.gate(hold):
        task = asyncio.create_task(model.ainvoke([HumanMessage("hello")]))
    await _settle()
    hold.set_exception(ResourceExhausted("token quota exhausted", reason="TOKEN_QUOTA_EXHAUSTED"))
    with pytest.raises(Exception):  # noqa: B017 — whatever the SDK makes of it
        await asyncio.wait_for(task, 10)
    assert model_server.seen == []


async def test_cancelling_a_waiting_call_leaves_the_reservation_alone(
        model_server: OpenAIServer) -> None:
    model = _model(model_server)
    hold: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with provider_gate.gate(hold):
        task = asyncio.create_task(model.ainvoke([HumanMessage("hello")]))
    await _settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not hold.cancelled()  # the hold is the turn's to release, not the call's
    assert model_server.seen == []
