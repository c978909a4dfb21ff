"""Chat's own metrics, beside the per-RPC ones every server exports."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from services.chat.events import Usage


class ChatMetrics:
    """Tokens charged for chat turns, by model and kind: what the dashboard's tokens
    per second come from."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Counter(
            "llmmesh_chat_tokens",
            "Tokens charged for chat turns, by model and kind (prompt or completion).",
            ["model", "kind"],
            registry=registry,
        )

    def charged(self, model: str, usage: Usage) -> None:
        """Count a turn's charge."""
        self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        self.tokens.labels(model, "completion").inc(usage.completion_tokens)
