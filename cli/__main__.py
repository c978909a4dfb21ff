"""`llmmesh`: the command line client."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Protocol

import grpc

from cli import account_commands, chat_command, document_commands, key_commands, team_commands
from cli.session import Endpoints, NotLoggedIn, Session, credentials_path


class CommandModule(Protocol):
    """A module that runs `llmmesh` commands: its `run` returns the exit status."""

    async def run(self, args: argparse.Namespace, endpoints: Endpoints,
                  session: Session) -> int: ...


COMMAND_MODULES: dict[str, CommandModule] = {
    "register": account_commands, "login": account_commands,
    "logout": account_commands, "whoami": account_commands,
    "ingest": document_commands, "search": document_commands,
    "chat": chat_command, "teams": team_commands, "keys": key_commands}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmmesh", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    account_commands.add_parsers(commands)
    document_commands.add_parsers(commands)
    chat_command.add_parser(commands)
    team_commands.add_parser(commands)
    key_commands.add_parser(commands)
    return parser


async def _run(args: argparse.Namespace) -> int:
    endpoints = Endpoints.from_env()
    session = Session(credentials_path(), endpoints.auth)
    return await COMMAND_MODULES[args.command].run(args, endpoints, session)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except NotLoggedIn as error:
        print(error, file=sys.stderr)
        return 2
    except grpc.aio.AioRpcError as error:
        print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
