"""A team's model allowlist in chat, over real chat, auth and Redis and the
OpenAI-compatible test server (which records every request it gets): a model outside
the allowlist is PERMISSION_DENIED before any provider request, unary and streamed, and
ListModels shows only the allowed models. A member's turn draws on the team's budget."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import field_mask_pb2
from llmmesh.auth.v1 import teams_pb2
from llmmesh.chat.v1 import chat_pb2

from tests.chat.openai_server import OpenAIServer
from tests.chat.streams import stream_chat
from tests.helpers import error_info, eventually, quota_failure
from tests.teams.conftest import make_team, team_usage


async def test_a_disallowed_model_is_refused_without_a_provider_request(
        chat_stub, team_stub, auth_stub, model_server: OpenAIServer) -> None:
    team = await make_team(team_stub, auth_stub, members=1, models=("slow",))
    (member,) = team.members
    calls = [
        chat_stub.Chat(chat_pb2.ChatRequest(
            message="hi", options=chat_pb2.ChatOptions(model="echo")), metadata=member.metadata),
        stream_chat(chat_stub, member, "hi", model="echo"),
        # No model named: the default (echo) is just as disallowed.
        chat_stub.Chat(chat_pb2.ChatRequest(message="hi"), metadata=member.metadata),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(caught.value)
        assert info.reason == "MODEL_NOT_ALLOWED"
        assert dict(info.metadata) == {"model": "echo", "team": team.name}
    # The refused turns stopped their prepared model calls: nothing was or will be sent.
    assert model_server.seen == []
    usage = await team_usage(team_stub, team)
    assert (usage.tokens_used, usage.tokens_reserved) == (0, 0)


async def test_list_models_shows_only_the_allowed_ones(chat_stub, team_stub, auth_stub,
                                                       alice) -> None:
    team = await make_team(team_stub, auth_stub, models=("slow", "extractive", "elsewhere"))
    listed = await chat_stub.ListModels(chat_pb2.ListModelsRequest(),
                                        metadata=team.owner.metadata)
    assert [m.model_id for m in listed.models] == ["slow", "extractive"]
    everything = await chat_stub.ListModels(chat_pb2.ListModelsRequest(),
                                            metadata=alice.metadata)  # in no team
    assert {"echo", "slow", "extractive"} <= {m.model_id for m in everything.models}


async def test_a_members_turns_draw_on_the_team_budget(chat_stub, team_stub, auth_stub,
                                                       model_server: OpenAIServer) -> None:
    team = await make_team(team_stub, auth_stub, members=1, limit=100_000,
                           models=("echo",))
    (member,) = team.members
    answer = await chat_stub.Chat(chat_pb2.ChatRequest(message="hello team"),
                                  metadata=member.metadata)
    streamed = await stream_chat(chat_stub, member, "and again")
    assert streamed.done is not None and len(model_server.seen) == 2
    charged = answer.usage.total_tokens + streamed.done.usage.total_tokens
    # Settlement is detached from the answer: wait for it.
    usage = await eventually(lambda: team_usage(team_stub, team),
                             lambda u: u.tokens_used == charged, what="both settlements")
    assert {m.username: m.tokens_used for m in usage.members} == {
        member.user.username: charged, team.owner.user.username: 0}
    # A budget smaller than a turn's worst case: refused before the provider.
    await team_stub.UpdateTeam(_limit(team.name, charged + 10), metadata=team.owner.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await chat_stub.Chat(chat_pb2.ChatRequest(message="one more"), metadata=member.metadata)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert quota_failure(caught.value).violations[0].subject == team.name
    assert len(model_server.seen) == 2


def _limit(name: str, limit: int) -> teams_pb2.UpdateTeamRequest:
    return teams_pb2.UpdateTeamRequest(
        team=teams_pb2.Team(name=name, monthly_token_limit=limit),
        update_mask=field_mask_pb2.FieldMask(paths=["monthly_token_limit"]))
