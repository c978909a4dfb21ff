"""A credentials file `llmmesh login` did not write is no session."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli.session import NotLoggedIn, Session


@pytest.mark.parametrize("content", [
    "not json",
    '["a", "list"]',
    '{"username": "ann", "access_token": "t", "refresh_token": "r"}',
    '{"username": "ann", "access_token": "t", "access_expires": "soon", "refresh_token": "r"}',
])
async def test_a_malformed_credentials_file_asks_for_a_login(tmp_path: Path,
                                                             content: str) -> None:
    path = tmp_path / "credentials.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(NotLoggedIn, match="llmmesh login"):
        await Session(path, "127.0.0.1:1").metadata()


async def test_a_fresh_session_gives_its_access_token(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    path.write_text('{"username": "ann", "access_token": "tok", "access_expires": 4102444800,'
                    ' "refresh_token": "r"}', encoding="utf-8")
    assert await Session(path, "127.0.0.1:1").metadata() == (("authorization", "Bearer tok"),)
