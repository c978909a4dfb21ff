"""Checks on chat requests: every problem reported at once as field violations."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from services.chat.registry import ModelRegistry, RegisteredModel
from services.runtime.errors import FieldViolation, InvalidArgument, check_fields
from services.runtime.names import collection_violation, document_name_violation

CONVERSATION_NAME = re.compile(r"^conversations/([0-9a-f]{32})$")
TURN_NAME = re.compile(r"^conversations/([0-9a-f]{32})/turns/([0-9a-f]{32})$")
MAX_TEMPERATURE = 2.0
DEFAULT_TOP_K, MAX_TOP_K = 4, 20
MAX_DOCUMENTS = 100


@dataclass(frozen=True)
class TurnOptions:
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    use_rag: bool = False
    documents: tuple[str, ...] = ()
    collection: str = ""
    rag_top_k: int = 0


@dataclass(frozen=True)
class TurnRequest:
    message: str
    conversation: str = ""  # conversations/{id}, or empty for a new one
    options: TurnOptions = field(default_factory=TurnOptions)


@dataclass(frozen=True)
class ValidTurn:
    conversation_id: str | None
    model: RegisteredModel
    max_tokens: int
    top_k: int


def validate_turn(request: TurnRequest, registry: ModelRegistry,
                  max_message_chars: int) -> ValidTurn:
    """The request's resolved settings, or InvalidArgument listing every violation."""
    options = request.options
    model = registry.get(options.model)
    violations = [
        _message(request.message, max_message_chars),
        _conversation(request.conversation),
        None if model else FieldViolation(
            "options.model", f"unknown model {options.model!r}; available: "
                             f"{', '.join(registry.ids())}"),
        _temperature(options.temperature),
        _max_tokens(options.max_tokens, model),
        _top_k(options.rag_top_k),
        *_retrieval_scope(options),
    ]
    check_fields(violations)
    assert model is not None
    match = CONVERSATION_NAME.match(request.conversation)
    return ValidTurn(conversation_id=match.group(1) if match else None, model=model,
                     max_tokens=options.max_tokens or model.spec.default_max_tokens,
                     top_k=options.rag_top_k or DEFAULT_TOP_K)


def conversation_id(name: str, field_name: str = "name") -> str:
    """The id in `conversations/{id}`, or InvalidArgument on `field_name`."""
    match = CONVERSATION_NAME.match(name)
    if match is None:
        raise InvalidArgument([FieldViolation(field_name, "must be conversations/{conversation}")])
    return match.group(1)


def turn_ids(name: str) -> tuple[str, str] | None:
    """The (conversation, turn) ids in `conversations/{c}/turns/{t}`; None if malformed."""
    match = TURN_NAME.match(name)
    return (match.group(1), match.group(2)) if match else None


def resume_after(sequence: int) -> FieldViolation | None:
    if sequence < 0:
        return FieldViolation("after_sequence", "must be 0 or more")
    return None


def _message(message: str, limit: int) -> FieldViolation | None:
    if not message.strip():
        return FieldViolation("message", "must not be empty")
    if len(message) > limit:
        return FieldViolation("message", f"must be at most {limit} characters, "
                                         f"got {len(message)}")
    return None


def _conversation(name: str) -> FieldViolation | None:
    if name and not CONVERSATION_NAME.match(name):
        return FieldViolation("conversation", "must be conversations/{conversation} or empty")
    return None


def _temperature(value: float | None) -> FieldViolation | None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value <= MAX_TEMPERATURE):
        return FieldViolation("options.temperature", f"must be between 0 and {MAX_TEMPERATURE}")
    return None


def _max_tokens(value: int | None, model: RegisteredModel | None) -> FieldViolation | None:
    if value is None or model is None:
        return None
    limit = model.spec.max_output_tokens
    if not 1 <= value <= limit:
        return FieldViolation("options.max_tokens",
                              f"must be between 1 and {limit} for model {model.spec.id!r}")
    return None


def _top_k(value: int) -> FieldViolation | None:
    if value != 0 and not 1 <= value <= MAX_TOP_K:
        return FieldViolation("options.rag_top_k", f"must be between 1 and {MAX_TOP_K}")
    return None


def _retrieval_scope(options: TurnOptions) -> list[FieldViolation | None]:
    found: list[FieldViolation | None] = []
    if (options.documents or options.collection) and not options.use_rag:
        found.append(FieldViolation("options.use_rag",
                                    "must be true when documents or collection is set"))
    if len(options.documents) > MAX_DOCUMENTS:
        found.append(FieldViolation("options.documents", f"at most {MAX_DOCUMENTS} documents"))
    found.extend(document_name_violation(name, f"options.documents[{index}]")
                 for index, name in enumerate(options.documents))
    found.append(collection_violation(options.collection, "options.collection"))
    return found
