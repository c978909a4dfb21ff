"""The `llmmesh` CLI as a user runs it: a separate process talking to real servers."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from tests.document.pdf import make_pdf
from tests.helpers import unique_username


async def _cli(env: dict[str, str], *args: str, stdin: str = "") -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, env=env,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=120)
    return process.returncode or 0, out.decode(), err.decode()


async def test_register_ingest_search_whoami_logout(tmp_path: Path, auth_address,
                                                    document_address) -> None:
    env = {**os.environ, "LLMMESH_AUTH_ADDRESS": auth_address,
           "LLMMESH_DOCUMENT_ADDRESS": document_address,
           "LLMMESH_CLI_CREDENTIALS": str(tmp_path / "creds.json")}
    code, out, err = await _cli(env, "search", "anything")
    assert code == 2 and "llmmesh login" in err

    username = unique_username("cli")
    code, out, err = await _cli(env, "register", username, f"{username}@example.com",
                                "--password-stdin", stdin="a long password\n")
    assert code == 0, err
    assert (tmp_path / "creds.json").stat().st_mode & 0o077 == 0

    (tmp_path / "volcano.md").write_text(
        "# Volcanoes\n\nMagma rises through vents; pressure from dissolved gases drives "
        "explosive eruptions such as Krakatoa in 1883.\n")
    (tmp_path / "report.pdf").write_bytes(make_pdf([["The harbour ferry leaves at 7:15 "
                                                      "every weekday morning."]]))
    (tmp_path / "photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    code, out, err = await _cli(env, "ingest", str(tmp_path / "volcano.md"),
                                str(tmp_path / "report.pdf"), str(tmp_path / "photo.txt"))
    assert code == 1  # one of three failed
    assert "2 of 3 files ingested" in out
    assert "volcano.md" in err and "[" + "#" * 30 + "]" in err  # a full progress bar
    assert "photo.txt" in err and "binary" in err

    code, out, err = await _cli(env, "search", "when does the ferry depart?", "-k", "2")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("1. ") and "report.pdf" in lines[0]
    assert "7:15" in lines[1]

    code, out, err = await _cli(env, "whoami")
    assert code == 0 and username in out and "tokens used" in out
    code, out, err = await _cli(env, "logout")
    assert code == 0 and not (tmp_path / "creds.json").exists()
