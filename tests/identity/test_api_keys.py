"""API keys directly on the services: the resource (create, get, list, revoke), the
secret shown once, keys working on auth, chat and document, revocation and expiry
within seconds, scopes, quota charged to the owner, and input validation."""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from llmmesh.auth.v1 import api_keys_pb2, auth_pb2, teams_pb2, teams_pb2_grpc
from llmmesh.chat.v1 import chat_pb2
from llmmesh.document.v1 import document_pb2

from tests.helpers import LoggedIn, error_info, eventually, field_violations, register_and_login
from tests.identity.conftest import bearer, create_key

State = api_keys_pb2.ApiKey.State


async def test_create_get_list_revoke_and_the_secret_is_shown_once(keys, owner: LoggedIn
                                                                   ) -> None:
    first = await create_key(keys, owner, "chat")
    second = await create_key(keys, owner)
    secret, key = second.secret, second.api_key
    assert secret.startswith(key.key_prefix) and key.key_prefix.startswith("llmk_")
    assert len(key.key_prefix) == len("llmk_") + 8
    assert key.name.startswith(f"users/{owner.user_id}/apiKeys/")
    assert key.state == State.STATE_ACTIVE and key.create_time.seconds > 0
    got = await keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=key.name),
                               metadata=owner.metadata)
    assert got == key and secret.encode() not in got.SerializeToString()
    page = await keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(
        parent="users/me", page_size=1), metadata=owner.metadata)
    assert [k.name for k in page.api_keys] == [key.name] and page.next_page_token
    rest = await keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(
        parent=f"users/{owner.user_id}", page_size=1, page_token=page.next_page_token),
        metadata=owner.metadata)
    assert [k.name for k in rest.api_keys] == [first.api_key.name]
    assert rest.next_page_token == ""
    assert secret.encode() not in page.SerializeToString()
    revoked = await keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=key.name),
                                      metadata=owner.metadata)
    assert revoked.state == State.STATE_REVOKED and revoked.revoke_time.seconds > 0
    again = await keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=key.name),
                                    metadata=owner.metadata)
    assert again.revoke_time == revoked.revoke_time  # idempotent


async def test_a_key_works_directly_on_auth_chat_and_document(
        keys, users, chat, documents, owner: LoggedIn) -> None:
    created = await create_key(keys, owner)
    me = await users.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                             metadata=bearer(created.secret))
    assert me.name == owner.user.name
    await chat.ListConversations(chat_pb2.ListConversationsRequest(),
                                 metadata=bearer(created.secret))
    await documents.ListDocuments(document_pb2.ListDocumentsRequest(),
                                  metadata=bearer(created.secret))
    used = await keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=created.api_key.name),
                                metadata=owner.metadata)
    assert used.last_use_time.seconds >= created.api_key.create_time.seconds


async def test_a_revoked_key_is_refused_within_seconds(keys, users, chat,
                                                       owner: LoggedIn) -> None:
    created = await create_key(keys, owner)
    await chat.ListConversations(chat_pb2.ListConversationsRequest(),
                                 metadata=bearer(created.secret))
    await keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=created.api_key.name),
                            metadata=owner.metadata)
    revoked_at = time.monotonic()

    async def chat_answer() -> grpc.StatusCode:
        try:
            await chat.ListConversations(chat_pb2.ListConversationsRequest(),
                                         metadata=bearer(created.secret))
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    await eventually(chat_answer, lambda code: code == grpc.StatusCode.UNAUTHENTICATED,
                     within=10, what="the revoked key refused by chat")
    assert time.monotonic() - revoked_at < 5
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await users.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                            metadata=bearer(created.secret))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_info(caught.value).reason == "API_KEY_REVOKED"


async def test_an_expired_key_is_refused(keys, users, owner: LoggedIn) -> None:
    soon = Timestamp()
    soon.FromNanoseconds(int((time.time() + 1.0) * 1e9))
    created = await create_key(keys, owner, expire_time=soon)

    async def answer() -> str:
        try:
            await users.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                metadata=bearer(created.secret))
        except grpc.aio.AioRpcError as error:
            return error_info(error).reason
        return "OK"

    await eventually(answer, lambda reason: reason == "API_KEY_EXPIRED", within=10,
                     what="the expired key refused")
    got = await keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=created.api_key.name),
                               metadata=owner.metadata)
    assert got.state == State.STATE_EXPIRED


async def _denied(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED, caught.value
    return error_info(caught.value).reason


async def test_scopes_are_enforced_by_every_service(keys, users, chat, documents, sso_channel,
                                                    owner: LoggedIn) -> None:
    teams = teams_pb2_grpc.TeamServiceStub(sso_channel)
    chat_only = bearer((await create_key(keys, owner, "chat")).secret)
    await chat.ListConversations(chat_pb2.ListConversationsRequest(), metadata=chat_only)
    # Chat's own retrieval from document runs on the holder's behalf: within `chat`.
    answer = await chat.Chat(chat_pb2.ChatRequest(
        message="what do my notes say?", options=chat_pb2.ChatOptions(use_rag=True)),
        metadata=chat_only)
    assert answer.message.content
    assert await _denied(documents.ListDocuments(document_pb2.ListDocumentsRequest(),
                                                 metadata=chat_only)) == "SCOPE_NOT_GRANTED"
    assert await _denied(users.GetUsage(auth_pb2.GetUsageRequest(
        name="users/me/usages/current"), metadata=chat_only)) == "SCOPE_NOT_GRANTED"
    reader = bearer((await create_key(keys, owner, "documents.read")).secret)
    await documents.ListDocuments(document_pb2.ListDocumentsRequest(), metadata=reader)
    assert await _denied(documents.CreateDocument(document_pb2.CreateDocumentRequest(
        source=document_pb2.DocumentSource(filename="a.txt"), content=b"hello"),
        metadata=reader)) == "SCOPE_NOT_GRANTED"
    assert await _denied(chat.ListConversations(chat_pb2.ListConversationsRequest(),
                                                metadata=reader)) == "SCOPE_NOT_GRANTED"
    everything = bearer((await create_key(keys, owner)).secret)
    for call in (keys.CreateApiKey(api_keys_pb2.CreateApiKeyRequest(
                     parent="users/me", api_key=api_keys_pb2.ApiKey(display_name="x")),
                     metadata=everything),
                 keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(parent="users/me"),
                                  metadata=everything),
                 teams.ListTeams(teams_pb2.ListTeamsRequest(), metadata=everything)):
        assert await _denied(call) == "SCOPE_NOT_GRANTED"


async def test_quota_usage_is_charged_to_the_owner(keys, users, chat, owner: LoggedIn) -> None:
    created = await create_key(keys, owner, "chat")
    answer = await chat.Chat(chat_pb2.ChatRequest(message="hello there"),
                             metadata=bearer(created.secret))
    usage = await users.GetUsage(auth_pb2.GetUsageRequest(name="users/me/usages/current"),
                                 metadata=owner.metadata)
    assert answer.usage.total_tokens > 0
    assert usage.tokens_used == answer.usage.total_tokens


async def test_unknown_and_malformed_keys_are_refused(users) -> None:
    for secret in ("llmk_" + "A" * 51, "llmk_short", "llmk_" + "B" * 8 + "C" * 43):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                metadata=bearer(secret))
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert error_info(caught.value).reason == "API_KEY_INVALID"


async def test_another_users_keys_answer_not_found(keys, users, owner: LoggedIn) -> None:
    created = await create_key(keys, owner)
    other = await register_and_login(users)
    for call in (keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=created.api_key.name),
                                metadata=other.metadata),
                 keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(name=created.api_key.name),
                                   metadata=other.metadata),
                 keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(
                     parent=f"users/{owner.user_id}"), metadata=other.metadata)):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_requests_name_every_bad_field(keys, owner: LoggedIn) -> None:
    past = Timestamp(seconds=int(time.time()) - 10)
    cases = [
        (api_keys_pb2.CreateApiKeyRequest(parent="users/me", api_key=api_keys_pb2.ApiKey(
            display_name="", scopes=["chat", "everything"], expire_time=past)),
         {"api_key.display_name", "api_key.scopes[1]", "api_key.expire_time"}),
        (api_keys_pb2.CreateApiKeyRequest(parent="users/me", api_key=api_keys_pb2.ApiKey(
            display_name="k", ttl=Duration(seconds=5))), {"api_key.ttl"}),
        (api_keys_pb2.CreateApiKeyRequest(parent="people/me", api_key=api_keys_pb2.ApiKey(
            display_name="k")), {"parent"}),
    ]
    for request, fields in cases:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await keys.CreateApiKey(request, metadata=owner.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == fields
    for name in ("users/me/apiKeys/nothex", "users/me/keys/0123456789abcdef", ""):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await keys.GetApiKey(api_keys_pb2.GetApiKeyRequest(name=name),
                                 metadata=owner.metadata)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(field_violations(caught.value)) == {"name"}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(
            parent="users/me", page_token="garbage"), metadata=owner.metadata)
    assert set(field_violations(caught.value)) == {"page_token"}
