"""Chat's domain values as protobuf messages (shared by the servicer and the live turns,
whose event logs hold the wire form)."""

from __future__ import annotations

from llmmesh.chat.v1 import chat_pb2

from services.chat.events import (
    Delta,
    Event,
    Failed,
    Finished,
    FinishReason,
    Source,
    SourcesFound,
    Started,
    Usage,
)
from services.runtime.errors import to_status

FINISH = {
    FinishReason.STOP: chat_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: chat_pb2.FINISH_REASON_LENGTH,
    FinishReason.QUOTA_EXHAUSTED: chat_pb2.FINISH_REASON_QUOTA_EXHAUSTED,
    FinishReason.CONTENT_FILTER: chat_pb2.FINISH_REASON_CONTENT_FILTER,
    FinishReason.CANCELLED: chat_pb2.FINISH_REASON_CANCELLED,
}


def stream_event(event: Event, sequence: int, turn: str) -> chat_pb2.StreamChatResponse:
    """The stream message for `event`, numbered `sequence` in the turn named `turn`."""
    if isinstance(event, Delta):
        return chat_pb2.StreamChatResponse(sequence=sequence,
                                           delta=chat_pb2.TokenDelta(text=event.text))
    if isinstance(event, Started):
        return chat_pb2.StreamChatResponse(sequence=sequence, start=chat_pb2.StreamStart(
            conversation=f"conversations/{event.conversation_id}", model=event.model,
            turn=turn))
    if isinstance(event, SourcesFound):
        return chat_pb2.StreamChatResponse(sequence=sequence, sources=chat_pb2.SourceList(
            sources=[source(s) for s in event.sources]))
    if isinstance(event, Finished):
        return chat_pb2.StreamChatResponse(sequence=sequence, done=chat_pb2.StreamDone(
            usage=usage(event.usage), finish_reason=FINISH[event.finish_reason],
            message=event.message_name, stored=event.stored, model=event.model))
    assert isinstance(event, Failed)
    return chat_pb2.StreamChatResponse(sequence=sequence, error=to_status(event.error))


def is_final(message: chat_pb2.StreamChatResponse) -> bool:
    """Whether `message` ends its stream (done or error)."""
    return message.WhichOneof("event") in ("done", "error")


def source(value: Source) -> chat_pb2.Source:
    return chat_pb2.Source(document=value.document, filename=value.filename,
                           chunk_index=value.chunk_index, score=value.score,
                           snippet=value.snippet())


def usage(value: Usage) -> chat_pb2.TokenUsage:
    return chat_pb2.TokenUsage(prompt_tokens=value.prompt_tokens,
                               completion_tokens=value.completion_tokens,
                               total_tokens=value.total_tokens)
