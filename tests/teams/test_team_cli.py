"""`llmmesh teams ...` as a user runs it: separate processes against the real auth server."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.helpers import unique_username


async def _cli(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    return process.returncode or 0, out.decode(), err.decode()


async def test_create_add_budget_models_usage_remove_leave(tmp_path: Path,
                                                            auth_address: str) -> None:
    env = {**os.environ, "LLMMESH_AUTH_ADDRESS": auth_address}
    owner = {**env, "LLMMESH_CLI_CREDENTIALS": str(tmp_path / "owner.json")}
    member = {**env, "LLMMESH_CLI_CREDENTIALS": str(tmp_path / "member.json")}
    names = unique_username("owner"), unique_username("member")
    for user_env, name in zip((owner, member), names, strict=True):
        code, _, err = await _cli(user_env, "register", name, f"{name}@example.com",
                                  "--password-stdin", stdin="a long password\n")
        assert code == 0, err

    code, out, _ = await _cli(member, "teams", "show")
    assert code == 1 and "in no team" in out
    code, out, err = await _cli(owner, "teams", "create", "Research", "--budget", "5000")
    assert code == 0 and "created teams/" in out, err
    code, out, err = await _cli(owner, "teams", "add-member", names[1])
    assert code == 0 and f"added {names[1]}" in out, err
    code, out, err = await _cli(owner, "teams", "set-models", "echo", "slow")
    assert code == 0 and "echo, slow" in out, err
    code, out, err = await _cli(owner, "teams", "set-budget", "9000")
    assert code == 0 and "9000" in out, err
    code, out, err = await _cli(member, "teams", "show")
    assert code == 0 and "9000 tokens a month; models: echo, slow" in out, err
    assert f"{names[0]}  owner" in out and f"{names[1]}  member" in out
    code, out, err = await _cli(member, "teams", "usage")
    assert code == 0 and "0 tokens used of 9000, 9000 left" in out, err
    code, out, err = await _cli(member, "teams", "set-budget", "1")
    assert code == 1 and "PERMISSION_DENIED" in err
    code, out, err = await _cli(owner, "teams", "remove-member", names[1])
    assert code == 0, err
    code, out, err = await _cli(owner, "teams", "leave")
    assert code == 1 and "FAILED_PRECONDITION" in err and "owner" in err
