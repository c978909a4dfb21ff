"""`llmmesh keys` as a user runs it: a separate process against the real auth server,
and the key it prints working as a bearer."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import grpc
from llmmesh.auth.v1 import auth_pb2

from tests.helpers import eventually, unique_username
from tests.identity.conftest import bearer


async def _cli(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_keys_create_list_revoke(tmp_path: Path, sso_auth_address: str, users) -> None:
    env = {**os.environ, "LLMMESH_AUTH_ADDRESS": sso_auth_address,
           "LLMMESH_CLI_CREDENTIALS": str(tmp_path / "creds.json")}
    username = unique_username("keys")
    code, _, err = await _cli(env, "register", username, f"{username}@example.com",
                              "--password-stdin", stdin="a long password\n")
    assert code == 0, err
    code, out, err = await _cli(env, "keys", "create", "ci bot", "--scope", "usage.read",
                                "--ttl-days", "30")
    assert code == 0, err
    secret = re.search(r"secret \(shown only now\): (llmk_\S+)", out)
    assert secret is not None and "scopes=usage.read" in out
    key_id = out.split()[0]
    me = await users.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                             metadata=bearer(secret.group(1)))
    assert me.username == username
    code, out, err = await _cli(env, "keys", "list")
    assert code == 0 and key_id in out and "active" in out and secret.group(1) not in out
    code, out, err = await _cli(env, "keys", "revoke", key_id)
    assert code == 0 and "revoked" in out, err
    code, out, err = await _cli(env, "keys", "create", "bad", "--scope", "everything")
    assert code == 1 and "INVALID_ARGUMENT" in err

    async def answer() -> grpc.StatusCode:
        try:
            await users.GetUser(auth_pb2.GetUserRequest(name="users/me"),
                                metadata=bearer(secret.group(1)))
        except grpc.aio.AioRpcError as error:
            return error.code()
        return grpc.StatusCode.OK

    await eventually(answer, lambda code: code == grpc.StatusCode.UNAUTHENTICATED,
                     within=10, what="the revoked key refused")
