"""gRPC transport for chat: unpack requests, call the domain, pack responses."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

import grpc
from google.protobuf import empty_pb2
from llmmesh.chat.v1 import chat_pb2, chat_pb2_grpc

from services.chat.conversations import ConversationRecord, MessageRecord
from services.chat.events import Finished
from services.chat.live_turns import TurnHub
from services.chat.turns import ChatEngine
from services.chat.validation import (
    TurnOptions,
    TurnRequest,
    conversation_id,
    resume_after,
    turn_ids,
)
from services.chat.wire import FINISH, source, usage
from services.runtime.context import current_user
from services.runtime.errors import FieldViolation, InvalidArgument, NotFound, check_fields
from services.runtime.paging import (
    decode_offset,
    decode_page_token,
    encode_page_token,
    page_size,
    paginate,
)
from services.runtime.timestamps import timestamp_from_millis, timestamp_from_seconds

_ROLE = {"user": chat_pb2.ROLE_USER, "assistant": chat_pb2.ROLE_ASSISTANT}


class ChatServicer(chat_pb2_grpc.ChatServiceServicer):
    """The public chat API."""

    def __init__(self, engine: ChatEngine, turns: TurnHub) -> None:
        self._engine = engine
        self._turns = turns

    async def Chat(
            self, request: chat_pb2.ChatRequest,
            context: grpc.aio.ServicerContext[chat_pb2.ChatRequest, chat_pb2.ChatResponse],
    ) -> chat_pb2.ChatResponse:
        turn = await self._engine.prepare(current_user().subject, _turn_request(request),
                                          streamed=False)
        event = await self._engine.answer(turn)
        return chat_pb2.ChatResponse(
            conversation=f"conversations/{turn.conversation_id}", model=event.model,
            message=_answer(event, event.model),
            sources=[source(s) for s in event.sources], usage=usage(event.usage),
            finish_reason=FINISH[event.finish_reason], stored=event.stored)

    async def StreamChat(
            self, request: chat_pb2.StreamChatRequest,
            context: grpc.aio.ServicerContext[chat_pb2.StreamChatRequest,
                                              chat_pb2.StreamChatResponse],
    ) -> AsyncGenerator[chat_pb2.StreamChatResponse, None]:
        turn = await self._engine.prepare(current_user().subject, _turn_request(request))
        # The turn runs detached; this call reads its events from memory (a disconnect
        # leaves it running for the grace period, for a resumer).
        async with aclosing(self._turns.start(turn).follow()) as events:
            async for event in events:
                yield event

    async def ResumeStreamChat(
            self, request: chat_pb2.ResumeStreamChatRequest,
            context: grpc.aio.ServicerContext[chat_pb2.ResumeStreamChatRequest,
                                              chat_pb2.StreamChatResponse],
    ) -> AsyncGenerator[chat_pb2.StreamChatResponse, None]:
        ids = turn_ids(request.name)
        check_fields([None if ids else _turn_violation(), resume_after(request.after_sequence)])
        assert ids is not None
        async with aclosing(self._turns.resume(current_user().subject, *ids,
                                               request.after_sequence)) as events:
            async for event in events:
                yield event

    async def CancelTurn(
            self, request: chat_pb2.CancelTurnRequest,
            context: grpc.aio.ServicerContext[chat_pb2.CancelTurnRequest, empty_pb2.Empty],
    ) -> empty_pb2.Empty:
        ids = turn_ids(request.name)
        if ids is None:
            raise InvalidArgument([_turn_violation()])
        await self._turns.cancel(current_user().subject, *ids)
        return empty_pb2.Empty()

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
        models = await self._engine.usable_models(current_user().subject)
        page = paginate(models, request, "models", default=50, maximum=100)
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


def _turn_violation() -> FieldViolation:
    return FieldViolation("name", "must be conversations/{conversation}/turns/{turn}")


def _answer(event: Finished, model: str) -> chat_pb2.Message:
    return chat_pb2.Message(name=event.message_name, role=chat_pb2.ROLE_ASSISTANT,
                            content=event.content, model=model,
                            sources=[source(s) for s in event.sources],
                            usage=usage(event.usage),
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
        sources=[source(s) for s in record.sources],
        create_time=timestamp_from_millis(record.create_ms))
    if record.usage is not None:
        message.usage.CopyFrom(usage(record.usage))
    return message


def _cursor(position: dict[str, object] | None) -> tuple[int, str] | None:
    """The (update time, id) a conversations page token continues after."""
    if position is None:
        return None
    update_ms, conversation = position.get("u"), position.get("c")
    if not isinstance(update_ms, int) or not isinstance(conversation, str):
        raise InvalidArgument([FieldViolation("page_token", "is malformed")])
    return update_ms, conversation
