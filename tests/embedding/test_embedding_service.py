"""The embedding service with the real local model over a real socket."""

from __future__ import annotations

import math

import grpc
import pytest
from llmmesh.embedding.v1 import embedding_pb2

from tests.conftest import SERVICE_METADATA
from tests.helpers import LoggedIn, error_info, field_violations


def _cosine(a, b) -> float:  # type: ignore[no-untyped-def]
    return sum(x * y for x, y in zip(a, b, strict=True))


async def test_embeds_a_batch_with_the_default_model(embedding_stub, alice: LoggedIn) -> None:
    texts = ["The cat sat on the mat.", "A kitten rested on the rug.",
             "Quarterly revenue grew by twelve percent."]
    answer = await embedding_stub.Embed(embedding_pb2.EmbedRequest(texts=texts),
                                        metadata=alice.metadata)
    assert answer.model == "all-minilm-l6-v2" and answer.dimension == 384
    assert len(answer.embeddings) == 3
    vectors = [list(e.values) for e in answer.embeddings]
    for vector in vectors:
        assert len(vector) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-4)
    # Meaning, not spelling: the two cat sentences are far closer than cat vs revenue.
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2]) + 0.3
    assert answer.usage.texts == 3
    assert answer.usage.characters == sum(len(t) for t in texts)
    assert answer.usage.tokens > 3 * 5


async def test_same_text_same_vector_regardless_of_batch(embedding_stub, alice) -> None:
    alone = await embedding_stub.Embed(embedding_pb2.EmbedRequest(texts=["solar panels"]),
                                       metadata=alice.metadata)
    batched = await embedding_stub.Embed(
        embedding_pb2.EmbedRequest(texts=["wind turbines", "solar panels"]),
        metadata=alice.metadata)
    assert _cosine(alone.embeddings[0].values, batched.embeddings[1].values) > 0.9999


async def test_lists_models(embedding_stub, alice) -> None:
    listed = await embedding_stub.ListEmbeddingModels(
        embedding_pb2.ListEmbeddingModelsRequest(), metadata=alice.metadata)
    (model,) = listed.embedding_models
    assert (model.name, model.dimension, model.provider, model.default) == (
        "embeddingModels/all-minilm-l6-v2", 384, "local", True)
    assert listed.next_page_token == ""


@pytest.mark.parametrize(("texts", "model", "field"), [
    ([], "", "texts"),
    (["ok"] * 257, "", "texts"),
    (["fine", "   "], "", "texts[1]"),
    (["x" * 8193], "", "texts[0]"),
    (["hello"], "gpt-nonexistent", "model"),
])
async def test_bad_requests(embedding_stub, alice, texts, model, field) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embedding_stub.Embed(embedding_pb2.EmbedRequest(texts=texts, model=model),
                                   metadata=alice.metadata)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(caught.value)
    assert field in violations
    if field == "model":
        assert "all-minilm-l6-v2" in violations["model"]  # the error lists what exists


async def test_needs_a_user(embedding_stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await embedding_stub.Embed(embedding_pb2.EmbedRequest(texts=["x"]))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_service_may_act_for_a_user_by_id_only_with_its_credential(
        embedding_stub, alice: LoggedIn) -> None:
    """A queued job keeps no user token: document's worker embeds for the owner with
    the service credential and the owner's id (`x-llmmesh-user`)."""
    on_behalf = (("x-llmmesh-user", alice.user_id),)
    answer = await embedding_stub.Embed(embedding_pb2.EmbedRequest(texts=["x"]),
                                        metadata=(*SERVICE_METADATA, *on_behalf))
    assert len(answer.embeddings) == 1
    for metadata, reason in [
        (on_behalf, "SERVICE_CREDENTIAL_REQUIRED"),
        (((("x-llmmesh-service-token", "wrong" * 8), *on_behalf)),
         "SERVICE_CREDENTIAL_REQUIRED"),
        ((*SERVICE_METADATA, ("x-llmmesh-user", "../someone")), "MALFORMED_TOKEN"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await embedding_stub.Embed(embedding_pb2.EmbedRequest(texts=["x"]),
                                       metadata=metadata)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).reason == reason
