"""`llmmesh keys create|list|revoke`: the logged-in user's API keys."""

from __future__ import annotations

import argparse

import grpc
from google.protobuf.duration_pb2 import Duration
from llmmesh.auth.v1 import api_keys_pb2, api_keys_pb2_grpc

from cli.session import Endpoints, Session

_STATES = {api_keys_pb2.ApiKey.STATE_ACTIVE: "active",
           api_keys_pb2.ApiKey.STATE_REVOKED: "revoked",
           api_keys_pb2.ApiKey.STATE_EXPIRED: "expired"}


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = commands.add_parser("keys", help="create, list and revoke API keys")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    create = actions.add_parser("create", help="create a key (its secret is shown once)")
    create.add_argument("display_name")
    create.add_argument("--scope", action="append", default=[], dest="scopes",
                        help="chat, documents.read, documents.write, embeddings, usage.read "
                             "(repeat; none: everything but managing keys and teams)")
    create.add_argument("--ttl-days", type=float, help="expire after this many days")
    actions.add_parser("list", help="list your keys")
    revoke = actions.add_parser("revoke", help="revoke a key")
    revoke.add_argument("name", help="users/me/apiKeys/<id> or just <id>")


def _name(value: str) -> str:
    return value if value.startswith("users/") else f"users/me/apiKeys/{value}"


def _line(key: api_keys_pb2.ApiKey) -> str:
    scopes = ",".join(key.scopes) or "all"
    expires = (key.expire_time.ToDatetime().isoformat(timespec="seconds") + "Z"
               if key.HasField("expire_time") else "never")
    used = (key.last_use_time.ToDatetime().isoformat(timespec="seconds") + "Z"
            if key.HasField("last_use_time") else "never")
    return (f"{key.name.rpartition('/')[2]}  {key.key_prefix}…  {_STATES.get(key.state, '?')}"
            f"  scopes={scopes}  expires={expires}  last used={used}  {key.display_name}")


async def run(args: argparse.Namespace, endpoints: Endpoints, session: Session) -> int:
    metadata = await session.metadata()
    async with grpc.aio.insecure_channel(endpoints.auth) as channel:
        keys = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
        if args.keys_command == "create":
            wanted = api_keys_pb2.ApiKey(display_name=args.display_name, scopes=args.scopes)
            if args.ttl_days is not None:
                wanted.ttl.CopyFrom(Duration(seconds=int(args.ttl_days * 86400)))
            created = await keys.CreateApiKey(api_keys_pb2.CreateApiKeyRequest(
                parent="users/me", api_key=wanted), metadata=metadata, timeout=10)
            print(_line(created.api_key))
            print(f"secret (shown only now): {created.secret}")
        elif args.keys_command == "list":
            token = ""
            while True:
                page = await keys.ListApiKeys(api_keys_pb2.ListApiKeysRequest(
                    parent="users/me", page_token=token), metadata=metadata, timeout=10)
                for key in page.api_keys:
                    print(_line(key))
                token = page.next_page_token
                if not token:
                    break
        else:
            revoked = await keys.RevokeApiKey(api_keys_pb2.RevokeApiKeyRequest(
                name=_name(args.name)), metadata=metadata, timeout=10)
            print(_line(revoked))
    return 0
