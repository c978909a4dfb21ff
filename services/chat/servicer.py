"""gRPC transport for chat: unpack requests, call the domain, pack responses."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import grpc
from google.protobuf import empty_pb2
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from services.chat.conversations import ConversationRecord, MessageRecord
from services.chat.events import (
    Delta,
    Failed,
    Finished,
    FinishReason,
    Source,
    SourcesFound,
    Started,
    Usage,
)
from services.chat.turns import ChatEngine
from services.chat.validation import TurnOptions, TurnRequest, conversation_id
from services.runtime.context import current_user
from services.runtime.errors import FieldViolation, InvalidArgument, NotFound, to_status
from services.runtime.paging import (
    decode_offset,
    decode_page_token,
    encode_page_token,
    page_size,
    paginate,
)
from services.runtime.timestamps import timestamp_from_millis, timestamp_from_seconds

_FINISH = {
    FinishReason.STOP: chat_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: chat_pb2.FINISH_REASON_LENGTH,
    FinishReason.QUOTA_EXHAUSTED: chat_pb2.FINISH_REASON_QUOTA_EXHAUSTED,
    FinishReason.CONTENT_FILTER: chat_pb2.FINISH_REASON_CONTENT_FILTER,
}
_ROLE = {"user": chat_pb2.ROLE_USER, "assistant": chat_pb2.ROLE_ASSISTANT}


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """The public chat API."""

    def __init__(self, engine: ChatEngine) -> None:
        self._engine = engine

    async def Chat(
            self, request: chat_pb2.ChatRequest,
            context: grpc.aio.ServicerContext[chat_pb2.ChatRequest, chat_pb2.ChatResponse],
    ) -> chat_pb2.ChatResponse:
        turn = await self._engine.prepare(current_user().subject, _turn_request(request),
                                          streamed=False)
        event = await self._engine.answer(turn)
        return chat_pb2.ChatResponse(
            conversation=f"conversations/{turn.conversation_id}", model=turn.model.spec.id,
            message=_answer(event, turn.model.spec.id),
            sources=[_source(s) for s in event.sources], usage=_usage(event.usage),
            finish_reason=_FINISH[event.finish_reason], stored=event.stored)

    async def StreamChat(
            self, request: chat_pb2.StreamChatRequest,
            context: grpc.aio.ServicerContext[chat_pb2.StreamChatRequest,
                                              chat_pb2.StreamChatResponse],
    ) -> AsyncGenerator[chat_pb2.StreamChatResponse, None]:
        turn = await self._engine.prepare(current_user().subject, _turn_request(request))
        async with aclosing(self._engine.run(turn)) as events:
            async for event in events:
                yield _stream_event(event)

    async def GetConversation(
            self, request: chat_pb2.GetConversationRequest,
            context: grpc.aio.ServicerContext[chat_pb2.GetConversationRequest,
                                              chat_pb2.Conversation],
    ) -> chat_pb2.Conversation:
        found = await self._engine.store.get(current_user().subject,
                                             conversation_id(request.name))
        if found is None:
            raise NotFound("conversation", request.name)
        return _conversation(found)

    async def ListConversations(
            self, request: chat_pb2.ListConversationsRequest,
            context: grpc.aio.ServicerContext[chat_pb2.ListConversationsRequest,
                                              chat_pb2.ListConversationsResponse],
    ) -> chat_pb2.ListConversationsResponse:
        size = page_size(request.page_size, default=20, maximum=100)
        user_id = current_user().subject
        scope = f"conversations:{user_id}"
        position = decode_page_token(request.page_token, scope)
        after = _cursor(position)
        found, more = await self._engine.store.list(user_id, size, after)
        # Conversations deleted between the index read and the fetch can empty a page.
        token = (encode_page_token(scope, u=found[-1].update_ms, c=found[-1].id)
                 if more and found else "")
        return chat_pb2.ListConversationsResponse(
            conversations=[_conversation(c) for c in found], next_page_token=token)

    async def ListMessages(
            self, request: chat_pb2.ListMessagesRequest,
            context: grpc.aio.ServicerContext[chat_pb2.ListMessagesRequest,
                                              chat_pb2.ListMessagesResponse],
    ) -> chat_pb2.ListMessagesResponse:
        conversation = conversation_id(request.parent, "parent")
        size = page_size(request.page_size, default=50, maximum=200)
        offset = decode_offset(request.page_token, f"messages:{conversation}")
        page = await self._engine.store.messages(current_user().subject, conversation,
                                                 offset, size)
        if page is None:
            raise NotFound("conversation", request.parent)
        found, more = page
        token = (encode_page_token(f"messages:{conversation}", o=offset + len(found))
                 if more else "")
        return chat_pb2.ListMessagesResponse(
            messages=[_message(m, conversation) for m in found], next_page_token=token)

    async def DeleteConversation(
            self, request: chat_pb2.DeleteConversationRequest,
            context: grpc.aio.ServicerContext[chat_pb2.DeleteConversationRequest, empty_pb2.Empty],
    ) -> empty_pb2.Empty:
        deleted = await self._engine.store.delete(current_user().subject,
                                                  conversation_id(request.name))
        if not deleted:
            raise NotFound("conversation", request.name)
        return empty_pb2.Empty()

    async def ListModels(
            self, request: chat_pb2.ListModelsRequest,
            context: grpc.aio.ServicerContext[chat_pb2.ListModelsRequest,
                                              chat_pb2.ListModelsResponse],
    ) -> chat_pb2.ListModelsResponse:
        current_user()
        page = paginate(self._engine.registry.all(), request, "models", default=50, maximum=100)
        return chat_pb2.ListModelsResponse(
            models=[chat_pb2.Model(name=f"models/{m.spec.id}", model_id=m.spec.id,
                                   provider=m.spec.provider, default=m.default,
                                   max_output_tokens=m.spec.max_output_tokens,
                                   generative=m.spec.generative) for m in page.items],
            next_page_token=page.next_page_token)


def _turn_request(request: chat_pb2.ChatRequest | chat_pb2.StreamChatRequest) -> TurnRequest:
    options = request.options
    return TurnRequest(
        message=request.message, conversation=request.conversation,
        options=TurnOptions(
            model=options.model,
            temperature=options.temperature if options.HasField("temperature") else None,
            max_tokens=options.max_tokens if options.HasField("max_tokens") else None,
            use_rag=options.use_rag, documents=tuple(options.documents),
            collection=options.collection, rag_top_k=options.rag_top_k))


def _stream_event(event: object) -> chat_pb2.StreamChatResponse:
    if isinstance(event, Delta):
        return chat_pb2.StreamChatResponse(delta=chat_pb2.TokenDelta(text=event.text))
    if isinstance(event, Started):
        return chat_pb2.StreamChatResponse(start=chat_pb2.StreamStart(
            conversation=f"conversations/{event.conversation_id}", model=event.model))
    if isinstance(event, SourcesFound):
        return chat_pb2.StreamChatResponse(sources=chat_pb2.SourceList(
            sources=[_source(s) for s in event.sources]))
    if isinstance(event, Finished):
        return chat_pb2.StreamChatResponse(done=chat_pb2.StreamDone(
            usage=_usage(event.usage), finish_reason=_FINISH[event.finish_reason],
            message=event.message_name, stored=event.stored))
    assert isinstance(event, Failed)
    return chat_pb2.StreamChatResponse(error=to_status(event.error))


def _source(source: Source) -> chat_pb2.Source:
    return chat_pb2.Source(document=source.document, filename=source.filename,
                           chunk_index=source.chunk_index, score=source.score,
                           snippet=source.snippet())


def _usage(usage: Usage) -> chat_pb2.TokenUsage:
    return chat_pb2.TokenUsage(prompt_tokens=usage.prompt_tokens,
                               completion_tokens=usage.completion_tokens,
                               total_tokens=usage.total_tokens)


def _answer(event: Finished, model: str) -> chat_pb2.Message:
    return chat_pb2.Message(name=event.message_name, role=chat_pb2.ROLE_ASSISTANT,
                            content=event.content, model=model,
                            sources=[_source(s) for s in event.sources],
                            usage=_usage(event.usage),
                            create_time=timestamp_from_seconds(event.create_time))


def _conversation(record: ConversationRecord) -> chat_pb2.Conversation:
    return chat_pb2.Conversation(name=f"conversations/{record.id}", title=record.title,
                                 message_count=record.message_count,
                                 create_time=timestamp_from_millis(record.create_ms),
                                 update_time=timestamp_from_millis(record.update_ms))


def _message(record: MessageRecord, conversation: str) -> chat_pb2.Message:
    message = chat_pb2.Message(
        name=f"conversations/{conversation}/messages/{record.id}", role=_ROLE[record.role],
        content=record.content, model=record.model,
        sources=[_source(s) for s in record.sources],
        create_time=timestamp_from_millis(record.create_ms))
    if record.usage is not None:
        message.usage.CopyFrom(_usage(record.usage))
    return message


def _cursor(position: dict[str, object] | None) -> tuple[int, str] | None:
    """The (update time, id) a conversations page token continues after."""
    if position is None:
        return None
    update_ms, conversation = position.get("u"), position.get("c")
    if not isinstance(update_ms, int) or not isinstance(conversation, str):
        raise InvalidArgument([FieldViolation("page_token", "is malformed")])
    return update_ms, conversation
