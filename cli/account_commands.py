"""`llmmesh register`, `login`, `logout` and `whoami`."""

from __future__ import annotations

import argparse
import getpass
import sys

import grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from cli.session import Endpoints, Session


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, helptext in [("register", "create an account"), ("login", "log in")]:
        parser = commands.add_parser(name, help=helptext)
        parser.add_argument("username")
        if name == "register":
            parser.add_argument("email")
        parser.add_argument("--password-stdin", action="store_true",
                            help="read the password from standard input")
    commands.add_parser("logout", help="end this session")
    commands.add_parser("whoami", help="show the logged-in user and this month's usage")


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return getpass.getpass("password: ")


async def run(args: argparse.Namespace, endpoints: Endpoints, session: Session) -> int:
    async with grpc.aio.insecure_channel(endpoints.auth) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        if args.command == "register":
            password = _password(args)
            await auth.CreateUser(auth_pb2.CreateUserRequest(
                user=auth_pb2.User(username=args.username, email=args.email),
                password=password), timeout=30)
            login = await auth.Login(auth_pb2.LoginRequest(username=args.username,
                                                           password=password), timeout=30)
            session.save(login.tokens, args.username)
            print(f"registered and logged in as {args.username}")
        elif args.command == "login":
            login = await auth.Login(auth_pb2.LoginRequest(username=args.username,
                                                           password=_password(args)),
                                     timeout=30)
            session.save(login.tokens, login.user.username)
            print(f"logged in as {login.user.username}")
        elif args.command == "logout":
            data = session.load()
            await auth.Logout(auth_pb2.LogoutRequest(refresh_token=str(data["refresh_token"])),
                              metadata=await session.metadata(), timeout=10)
            session.forget()
            print("logged out")
        else:
            metadata = await session.metadata()
            me = await auth.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                    metadata=metadata, timeout=10)
            usage = await auth.GetUsage(auth_pb2.GetUsageRequest(
                name="users/me/usages/current"), metadata=metadata, timeout=10)
            print(f"{me.username} <{me.email}>  {usage.month}: {usage.tokens_used} of "
                  f"{usage.token_limit} tokens used, {usage.tokens_remaining} left")
    return 0
