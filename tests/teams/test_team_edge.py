"""Teams through real Envoy (llmmesh's own spec, REST transcoded to gRPC) in front of
the real auth and chat servers: manage a team with curl-like requests, and a model
outside the team's allowlist is a 403 with the JSON status, before any provider call."""

from __future__ import annotations

import aiohttp
import pytest

from tests.chat.openai_server import OpenAIServer
from tests.edge.conftest import Edge, EdgeUser, register


@pytest.fixture
async def owner(http: aiohttp.ClientSession, teams_edge: Edge) -> EdgeUser:
    return await register(http, teams_edge.url)


async def _json(response: aiohttp.ClientResponse, status: int = 200) -> dict:  # type: ignore[type-arg]
    body = await response.json(content_type=None)
    assert response.status == status, body
    return body  # type: ignore[no-any-return]


async def test_manage_a_team_and_see_its_usage_over_rest(
        http: aiohttp.ClientSession, teams_edge: Edge, owner: EdgeUser) -> None:
    url = teams_edge.url
    async with http.post(f"{url}/v1/teams", headers=owner.bearer, json={
            "displayName": "Research", "monthlyTokenLimit": "50000"}) as response:
        team = await _json(response)
    assert team["memberCount"] == 1 and team["monthlyTokenLimit"] == "50000"
    member = await register(http, url)
    async with http.post(f"{url}/v1/{team['name']}/members", headers=owner.bearer,
                         json={"username": member.username}) as response:
        added = await _json(response)
    assert added["role"] == "TEAM_ROLE_MEMBER" and added["user"] == f"users/{member.user_id}"
    async with http.patch(f"{url}/v1/{team['name']}?updateMask=allowedModels",
                          headers=owner.bearer,
                          json={"allowedModels": ["echo"]}) as response:
        assert (await _json(response))["allowedModels"] == ["echo"]
    async with http.get(f"{url}/v1/teams", headers=member.bearer) as response:
        assert [t["name"] for t in (await _json(response))["teams"]] == [team["name"]]
    async with http.get(f"{url}/v1/{team['name']}/usages/current",
                        headers=member.bearer) as response:
        usage = await _json(response)
    assert usage["tokenLimit"] == "50000" and len(usage["members"]) == 2
    # A member may not manage the team: 403 with the google.rpc.Status as JSON.
    async with http.delete(f"{url}/v1/{team['name']}", headers=member.bearer) as response:
        denied = await _json(response, 403)
    assert denied["details"][0]["reason"] == "TEAM_OWNER_REQUIRED"
    # Leaving: the member removes themself.
    async with http.delete(f"{url}/v1/{team['name']}/members/me",
                           headers=member.bearer) as response:
        await _json(response)
    async with http.get(f"{url}/v1/{team['name']}", headers=member.bearer) as response:
        assert (await _json(response, 404))["code"] == 5


async def test_a_disallowed_model_is_a_403_before_the_provider(
        http: aiohttp.ClientSession, teams_edge: Edge, owner: EdgeUser,
        model_server: OpenAIServer) -> None:
    url = teams_edge.url
    async with http.post(f"{url}/v1/teams", headers=owner.bearer, json={
            "displayName": "Locked", "allowedModels": ["slow"]}) as response:
        await _json(response)
    async with http.get(f"{url}/v1/models", headers=owner.bearer) as response:
        assert [m["modelId"] for m in (await _json(response))["models"]] == ["slow"]
    for path in ("conversations:chat", "conversations:streamChat"):
        async with http.post(f"{url}/v1/{path}", headers=owner.bearer, json={
                "message": "hi", "options": {"model": "echo"}}) as response:
            refused = await _json(response, 403)
        (info,) = [d for d in refused["details"] if d["@type"].endswith("ErrorInfo")]
        assert info["reason"] == "MODEL_NOT_ALLOWED", path
        assert info["metadata"]["model"] == "echo"
    assert model_server.seen == []
