"""Team fixtures: the TeamService stub on the session's auth server, helpers to make
teams and members, the chat server (with the OpenAI-compatible test server that counts
provider requests) and real Envoy in front of auth and chat with llmmesh's own spec."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from llmmesh.auth.v1 import auth_pb2_grpc, quota_pb2, quota_pb2_grpc, teams_pb2, teams_pb2_grpc

from gateway import deployment
from gateway.local_edge import start_local_edge
from gateway.spec import LLMMESH_SPEC
from mesh.redis_server import free_port
from services.runtime.server import MeshServer
from tests.chat.conftest import (  # noqa: F401 — re-declared for this package
    chat_env,
    chat_server,
    chat_stub,
    fresh_script,
    model_server,
)
from tests.conftest import SERVICE_METADATA
from tests.edge.conftest import Edge, http, ratelimit_server  # noqa: F401
from tests.helpers import LoggedIn, register_and_login


@pytest.fixture(scope="session")
def team_stub(auth_channel: grpc.aio.Channel) -> teams_pb2_grpc.TeamServiceStub:
    return teams_pb2_grpc.TeamServiceStub(auth_channel)


@dataclass
class TeamOf:
    """A team with its owner (and whoever was added)."""

    name: str
    owner: LoggedIn
    members: list[LoggedIn]

    @property
    def team_id(self) -> str:
        return self.name.removeprefix("teams/")


async def make_team(team_stub: teams_pb2_grpc.TeamServiceStub,
                    auth_stub: auth_pb2_grpc.AuthServiceStub, *, members: int = 0,
                    limit: int = 0, models: tuple[str, ...] = (),
                    owner: LoggedIn | None = None) -> TeamOf:
    """A new team owned by a new user, with `members` new users added."""
    owner = owner or await register_and_login(auth_stub)
    team = await team_stub.CreateTeam(teams_pb2.CreateTeamRequest(team=teams_pb2.Team(
        display_name="Research", monthly_token_limit=limit, allowed_models=models)),
        metadata=owner.metadata)
    added = []
    for _ in range(members):
        user = await register_and_login(auth_stub)
        await add_member(team_stub, owner, team.name, user)
        added.append(user)
    return TeamOf(team.name, owner, added)


async def add_member(team_stub: teams_pb2_grpc.TeamServiceStub, owner: LoggedIn, team: str,
                     user: LoggedIn) -> teams_pb2.TeamMember:
    return await team_stub.CreateTeamMember(teams_pb2.CreateTeamMemberRequest(
        parent=team, member=teams_pb2.TeamMember(user=user.user.name)),
        metadata=owner.metadata)


async def set_user_limit(quota_stub: quota_pb2_grpc.QuotaServiceStub, user_id: str,
                         limit: int) -> None:
    await quota_stub.SetTokenLimit(
        quota_pb2.SetTokenLimitRequest(user_id=user_id, monthly_token_limit=limit),
        metadata=SERVICE_METADATA)


async def team_usage(team_stub: teams_pb2_grpc.TeamServiceStub, team: TeamOf,
                     month: str = "current") -> teams_pb2.TeamUsage:
    return await team_stub.GetTeamUsage(
        teams_pb2.GetTeamUsageRequest(name=f"{team.name}/usages/{month}"),
        metadata=team.owner.metadata)


@pytest.fixture(scope="session")
def teams_edge(auth_address: str, chat_server: MeshServer,  # noqa: F811
               ratelimit_server: MeshServer,  # noqa: F811
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    """Real Envoy with llmmesh's spec in front of the session's auth and the chat
    server of this package (the rate limit service has the edge suite's rules)."""
    spec = LLMMESH_SPEC
    directory = tmp_path_factory.mktemp("teams-envoy")
    nobody = ("127.0.0.1", free_port())
    target = deployment.local(
        spec, str(directory), listener_port=0, admin_port=0,
        upstreams={**{u.name: nobody for u in spec.upstreams},
                   "auth": ("127.0.0.1", int(auth_address.rpartition(":")[2])),
                   "chat": ("127.0.0.1", chat_server.port)},
        ratelimit=("127.0.0.1", ratelimit_server.port))
    envoy = start_local_edge(spec, target, log_path=directory / "envoy.log", concurrency=1)
    yield Edge(f"http://127.0.0.1:{envoy.listener_port('edge')}", envoy, envoy.admin_port)
    envoy.stop()
