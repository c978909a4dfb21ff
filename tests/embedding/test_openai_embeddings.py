"""OpenAI-compatible embedding models: the real langchain-openai client against an
OpenAI-style HTTP server the test starts on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import grpc
import pytest
from llmmesh.embedding.v1 import embedding_pb2, embedding_pb2_grpc

from services.embedding.config import EmbeddingConfig
from services.embedding.server import create_server
from services.runtime.config import ConfigError, Env
from tests.conftest import mesh_env
from tests.fake_embeddings_provider import (
    DIMENSION,
    FakeEmbeddingsProvider,
    fake_vector,
    running_provider,
)
from tests.helpers import LoggedIn, error_info


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[tuple[FakeEmbeddingsProvider, str]]:
    async with running_provider() as running:
        yield running


@pytest.fixture(scope="module")
async def openai_stub(provider, redis_server, data_dir, auth_address) -> AsyncIterator[
        embedding_pb2_grpc.EmbeddingServiceStub]:
    _, base_url = provider
    models = [{"id": "remote-small", "provider": "openai", "model": "text-embedding-3-small",
               "dimension": DIMENSION, "base_url": base_url, "api_key_env": "TEST_EMBED_KEY"},
              {"id": "remote-other", "provider": "openai", "dimension": DIMENSION,
               "base_url": base_url}]
    env = mesh_env(redis_server, data_dir, LLMMESH_AUTH_ADDRESS=auth_address,
                   LLMMESH_EMBEDDING_MODELS=json.dumps(models),
                   LLMMESH_EMBEDDING_DEFAULT_MODEL="remote-small", TEST_EMBED_KEY="sk-test-1")
    server = create_server(EmbeddingConfig.from_env(Env(env)))
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield embedding_pb2_grpc.EmbeddingServiceStub(channel)
    await server.stop(0)


async def test_remote_model_through_the_real_client(provider, openai_stub,
                                                    alice: LoggedIn) -> None:
    fake, _ = provider
    fake.fail_with, fake.wrong_dimension = None, False
    answer = await openai_stub.Embed(embedding_pb2.EmbedRequest(texts=["alpha", "beta"]),
                                     metadata=alice.metadata)
    assert answer.model == "remote-small" and answer.dimension == DIMENSION
    for got, text in zip(answer.embeddings, ["alpha", "beta"], strict=True):
        assert list(got.values) == pytest.approx(fake_vector(text), abs=1e-6)
    last = fake.requests[-1]
    assert last["auth"] == "Bearer sk-test-1"  # the key came from the named variable
    assert last["body"]["model"] == "text-embedding-3-small"  # type: ignore[index]
    assert last["body"]["input"] == ["alpha", "beta"]  # type: ignore[index] — text, not tokens


async def test_models_are_listed_with_the_default(openai_stub, alice) -> None:
    listed = await openai_stub.ListEmbeddingModels(
        embedding_pb2.ListEmbeddingModelsRequest(page_size=1), metadata=alice.metadata)
    assert [m.model_id for m in listed.embedding_models] == ["remote-other"]
    rest = await openai_stub.ListEmbeddingModels(
        embedding_pb2.ListEmbeddingModelsRequest(page_size=1,
                                                 page_token=listed.next_page_token),
        metadata=alice.metadata)
    assert [(m.model_id, m.default) for m in rest.embedding_models] == [("remote-small", True)]
    assert rest.next_page_token == ""


# The same statuses and reasons as chat's (services/runtime/provider_errors.py).
@pytest.mark.parametrize(("status", "code", "reason"), [
    (429, grpc.StatusCode.RESOURCE_EXHAUSTED, "MODEL_RATE_LIMITED"),
    (503, grpc.StatusCode.UNAVAILABLE, "MODEL_UNAVAILABLE"),
    (400, grpc.StatusCode.FAILED_PRECONDITION, "MODEL_REJECTED"),
])
async def test_provider_errors_map_to_clear_statuses(provider, openai_stub, alice, status,
                                                     code, reason) -> None:
    fake, _ = provider
    fake.fail_with = status
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await openai_stub.Embed(embedding_pb2.EmbedRequest(texts=["x"]),
                                    metadata=alice.metadata)
    finally:
        fake.fail_with = None
    assert caught.value.code() == code
    assert error_info(caught.value).reason == reason
    assert error_info(caught.value).metadata["model"] == "remote-small"
    assert error_info(caught.value).metadata["provider_status"] == str(status)


async def test_wrong_dimension_is_caught(provider, openai_stub, alice) -> None:
    fake, _ = provider
    fake.wrong_dimension = True
    try:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await openai_stub.Embed(embedding_pb2.EmbedRequest(texts=["x"]),
                                    metadata=alice.metadata)
    finally:
        fake.wrong_dimension = False
    assert error_info(caught.value).reason == "PROVIDER_BAD_RESPONSE"


@pytest.mark.parametrize(("models", "message"), [
    ("not json", "LLMMESH_EMBEDDING_MODELS"),
    ("[]", "non-empty"),
    ('[{"id": "a", "provider": "magic"}]', "unknown provider"),
    ('[{"id": "a", "provider": "openai", "base_url": "http://x"}]', "dimension"),
    ('[{"id": "a", "provider": "local"}, {"id": "a", "provider": "local"}]', "unique"),
])
def test_bad_model_configs(models: str, message: str, tmp_path) -> None:
    with pytest.raises(ConfigError, match=message):
        EmbeddingConfig.from_env(Env({"LLMMESH_DATA_DIR": str(tmp_path),
                                      "LLMMESH_EMBEDDING_MODELS": models}))
