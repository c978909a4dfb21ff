"""The model registry by configuration, and the prompt's source blocks."""

from __future__ import annotations

import json

import pytest
from langchain_openai import ChatOpenAI

from services.chat.config import ChatConfig, parse_models
from services.chat.events import Source
from services.chat.extractive import ExtractiveChatModel, sentences
from services.chat.prompts import build_messages, parse_sources
from services.chat.registry import ModelRegistry
from services.runtime.config import ConfigError, Env

BASE = {"LLMMESH_SERVICE_TOKEN": "t" * 40}


def _config(tmp_path, **env: str) -> ChatConfig:  # type: ignore[no-untyped-def]
    return ChatConfig.from_env(Env({**BASE, "LLMMESH_DATA_DIR": str(tmp_path), **env}))


def test_without_endpoints_the_extractive_model_is_the_default(tmp_path) -> None:
    config = _config(tmp_path)
    assert [m.id for m in config.models] == ["extractive"]
    assert config.default_model == "extractive" and not config.models[0].generative
    assert (config.history_turns, config.max_message_chars) == (10, 32_768)
    assert config.retention_seconds == 30 * 86400
    registry = ModelRegistry(config.models, config.default_model, embedder=None)
    assert isinstance(registry.get("").model, ExtractiveChatModel)


def test_openai_entries_build_chat_openai_with_streamed_usage(tmp_path) -> None:
    models = [{"id": "llama", "model": "llama3.1", "base_url": "http://127.0.0.1:9/v1",
               "api_key_env": "MY_KEY", "max_output_tokens": 2048, "default": True}]
    config = _config(tmp_path, LLMMESH_CHAT_MODELS=json.dumps(models), MY_KEY="sk-secret")
    assert [m.id for m in config.models] == ["llama", "extractive"]
    assert config.default_model == "llama"
    assert "sk-secret" not in repr(config.models[0])
    registry = ModelRegistry(config.models, config.default_model, embedder=None)
    model = registry.get("").model
    assert isinstance(model, ChatOpenAI)
    assert model.stream_usage and model.model_name == "llama3.1"
    assert model.openai_api_base == "http://127.0.0.1:9/v1"
    assert model.openai_api_key is not None
    assert model.openai_api_key.get_secret_value() == "sk-secret"
    assert registry.get("nope") is None


@pytest.mark.parametrize(("raw", "says"), [
    ("{not json", "not valid JSON"),
    ('{"id": "x"}', "JSON list"),
    ('[{"id": "a b", "base_url": "http://x"}]', ".id must be"),
    ('[{"id": "a"}]', "base_url is required"),
    ('[{"id": "a", "provider": "magic"}]', "provider must be one of"),
    ('[{"id": "a", "base_url": "http://x", "tempreature": 1}]', "unknown keys"),
    ('[{"id": "a", "base_url": "http://x", "max_output_tokens": 0}]', "positive integer"),
    ('[{"id": "a", "base_url": "http://x", "default_max_tokens": 9000}]', "exceeds"),
    ('[{"id": "a", "base_url": "http://x"}, {"id": "a", "base_url": "http://y"}]', "repeats"),
    ('[{"id": "a", "base_url": "http://x", "api_key_env": "MISSING"}]', "MISSING is required"),
])
def test_bad_model_entries_stop_start_up(raw: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        parse_models(raw, Env({}))


def test_the_default_model_must_exist(tmp_path) -> None:
    with pytest.raises(ConfigError, match="not a model"):
        _config(tmp_path, LLMMESH_CHAT_DEFAULT_MODEL="gpt-9")


def test_sources_survive_the_round_trip_through_the_prompt() -> None:
    sources = [Source("documents/a", "a.txt", 0, 0.9, "First chunk.\nIt has [2] inside."),
               Source("documents/b", "b, c.md", 7, 0.5, "Second chunk text.")]
    messages = build_messages("question?", [], sources)
    passages = parse_sources(messages)
    assert [(p.number, p.label, p.text) for p in passages] == [
        (1, "a.txt, chunk 0", "First chunk.\nIt has [2] inside."),
        (2, "b, c.md, chunk 7", "Second chunk text.")]
    assert parse_sources(build_messages("question?", [], None)) == []
    assert parse_sources(build_messages("question?", [], [])) == []


def test_sentences_skip_fragments() -> None:
    assert sentences("Hi. The Moon pulls the sea. Why? Tides rise twice a day!\nok") == [
        "The Moon pulls the sea.", "Tides rise twice a day!"]
