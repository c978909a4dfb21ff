"""`llmmesh teams create|show|add-member|remove-member|leave|set-budget|set-models|usage`.

Every subcommand but `create` acts on the caller's team (a user is in at most one),
or on the one `--team teams/{team}` names.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import grpc
from google.protobuf import field_mask_pb2
from llmmesh.auth.v1 import teams_pb2, teams_pb2_grpc

from cli.session import Endpoints, Session

_ROLE = {teams_pb2.TEAM_ROLE_OWNER: "owner", teams_pb2.TEAM_ROLE_MEMBER: "member"}
TIMEOUT = 10


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("teams", help="your team: members, budget, models, usage")
    sub = parser.add_subparsers(dest="teams_command", required=True)
    create = sub.add_parser("create", help="create a team (you become its owner)")
    create.add_argument("display_name")
    create.add_argument("--budget", type=int, default=0,
                        help="monthly token budget shared by the members (0: none)")
    create.add_argument("--models", nargs="*", default=[],
                        help="the model ids members may use (none: every model)")
    for name, helptext in [("show", "show the team and its members"),
                           ("leave", "leave the team"),
                           ("usage", "the team's token usage, per member")]:
        command = sub.add_parser(name, help=helptext)
        _team_option(command)
        if name == "usage":
            command.add_argument("--month", default="current", help="YYYY-MM (default: now)")
    add = sub.add_parser("add-member", help="add a user by username (owners)")
    add.add_argument("username")
    add.add_argument("--owner", action="store_true", help="make them an owner too")
    _team_option(add)
    remove = sub.add_parser("remove-member", help="remove a member by username (owners)")
    remove.add_argument("username")
    _team_option(remove)
    budget = sub.add_parser("set-budget", help="set the monthly token budget (owners)")
    budget.add_argument("tokens", type=int, help="0: no team budget")
    _team_option(budget)
    models = sub.add_parser("set-models", help="set the allowed models (owners)")
    models.add_argument("models", nargs="*", help="model ids; none: every model")
    _team_option(models)


def _team_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--team", help="teams/{team} (default: the team you are in)")


async def run(args: argparse.Namespace, endpoints: Endpoints, session: Session) -> int:
    metadata = await session.metadata()
    async with grpc.aio.insecure_channel(endpoints.auth) as channel:
        stub = teams_pb2_grpc.TeamServiceStub(channel)
        if args.teams_command == "create":
            team = await stub.CreateTeam(teams_pb2.CreateTeamRequest(team=teams_pb2.Team(
                display_name=args.display_name, monthly_token_limit=args.budget,
                allowed_models=args.models)), metadata=metadata, timeout=TIMEOUT)
            print(f"created {team.name} ({team.display_name}); you are its owner")
            return 0
        name = args.team or await _my_team(stub, metadata)
        if name is None:
            print("you are in no team: `llmmesh teams create NAME`, or ask a team's owner "
                  "to add you")
            return 1
        return await _COMMANDS[args.teams_command](stub, metadata, name, args)


Metadata = tuple[tuple[str, str], ...]
if TYPE_CHECKING:  # the async stub type exists in the generated .pyi only
    Stub = teams_pb2_grpc.TeamServiceAsyncStub


async def _my_team(stub: Stub, metadata: Metadata) -> str | None:
    teams = await stub.ListTeams(teams_pb2.ListTeamsRequest(), metadata=metadata,
                                 timeout=TIMEOUT)
    return teams.teams[0].name if teams.teams else None


async def _show(stub: Stub, metadata: Metadata, name: str,
                args: argparse.Namespace) -> int:
    team = await stub.GetTeam(teams_pb2.GetTeamRequest(name=name), metadata=metadata,
                              timeout=TIMEOUT)
    members = await stub.ListTeamMembers(teams_pb2.ListTeamMembersRequest(
        parent=name, page_size=100), metadata=metadata, timeout=TIMEOUT)
    budget = f"{team.monthly_token_limit} tokens a month" if team.monthly_token_limit \
        else "no team budget"
    models = ", ".join(team.allowed_models) or "every model"
    print(f"{team.display_name} ({team.name}): {budget}; models: {models}")
    for member in members.members:
        print(f"  {member.username or member.user}  {_ROLE.get(member.role, '?')}")
    return 0


async def _add(stub: Stub, metadata: Metadata, name: str,
               args: argparse.Namespace) -> int:
    role = teams_pb2.TEAM_ROLE_OWNER if args.owner else teams_pb2.TEAM_ROLE_MEMBER
    member = await stub.CreateTeamMember(teams_pb2.CreateTeamMemberRequest(
        parent=name, member=teams_pb2.TeamMember(username=args.username, role=role)),
        metadata=metadata, timeout=TIMEOUT)
    print(f"added {member.username} to {name} as {_ROLE[member.role]}")
    return 0


async def _remove(stub: Stub, metadata: Metadata, name: str,
                  args: argparse.Namespace) -> int:
    members = await stub.ListTeamMembers(teams_pb2.ListTeamMembersRequest(
        parent=name, page_size=100), metadata=metadata, timeout=TIMEOUT)
    found = [m for m in members.members if args.username in {m.username, m.user}]
    if not found:
        print(f"{args.username} is not a member of {name}")
        return 1
    await stub.DeleteTeamMember(teams_pb2.DeleteTeamMemberRequest(name=found[0].name),
                                metadata=metadata, timeout=TIMEOUT)
    print(f"removed {args.username} from {name}")
    return 0


async def _leave(stub: Stub, metadata: Metadata, name: str,
                 args: argparse.Namespace) -> int:
    await stub.DeleteTeamMember(teams_pb2.DeleteTeamMemberRequest(name=f"{name}/members/me"),
                                metadata=metadata, timeout=TIMEOUT)
    print(f"left {name}")
    return 0


async def _update(stub: Stub, metadata: Metadata, name: str,
                  team: teams_pb2.Team, field: str) -> teams_pb2.Team:
    team.name = name
    return await stub.UpdateTeam(teams_pb2.UpdateTeamRequest(
        team=team, update_mask=field_mask_pb2.FieldMask(paths=[field])),
        metadata=metadata, timeout=TIMEOUT)


async def _set_budget(stub: Stub, metadata: Metadata, name: str,
                      args: argparse.Namespace) -> int:
    team = await _update(stub, metadata, name,
                         teams_pb2.Team(monthly_token_limit=args.tokens), "monthly_token_limit")
    print(f"{team.name}: {team.monthly_token_limit or 'no'} monthly token budget")
    return 0


async def _set_models(stub: Stub, metadata: Metadata, name: str,
                      args: argparse.Namespace) -> int:
    team = await _update(stub, metadata, name, teams_pb2.Team(allowed_models=args.models),
                         "allowed_models")
    print(f"{team.name}: models {', '.join(team.allowed_models) or 'all allowed'}")
    return 0


async def _usage(stub: Stub, metadata: Metadata, name: str,
                 args: argparse.Namespace) -> int:
    usage = await stub.GetTeamUsage(teams_pb2.GetTeamUsageRequest(
        name=f"{name}/usages/{args.month}"), metadata=metadata, timeout=TIMEOUT)
    limit = (f"of {usage.token_limit}, {usage.tokens_remaining} left" if usage.token_limit
             else "(no team budget)")
    print(f"{name} {usage.month}: {usage.tokens_used} tokens used {limit}; "
          f"{usage.tokens_reserved} held")
    for member in usage.members:
        print(f"  {member.username or member.member}  {member.tokens_used}")
    return 0


_COMMANDS = {"show": _show, "add-member": _add, "remove-member": _remove, "leave": _leave,
             "set-budget": _set_budget, "set-models": _set_models, "usage": _usage}
