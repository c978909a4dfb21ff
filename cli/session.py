"""The CLI's login session: tokens saved in a private file, refreshed when they expire.

The file (`~/.config/llmmesh/credentials.json` unless LLMMESH_CLI_CREDENTIALS names
another) holds the access and refresh tokens, readable by the owner only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from llmmesh.auth.v1 import auth_pb2, auth_pb2_grpc

from services.runtime.config import Env, endpoint

REFRESH_MARGIN_SECONDS = 30


@dataclass(frozen=True)
class Endpoints:
    auth: str
    chat: str
    document: str

    @classmethod
    def from_env(cls, env: Env | None = None) -> Endpoints:
        env = env or Env()
        host = "127.0.0.1"
        return cls(auth=endpoint(env, "auth", host).address,
                   chat=endpoint(env, "chat", host).address,
                   document=endpoint(env, "document", host).address)


def credentials_path(env: Env | None = None) -> Path:
    env = env or Env()
    default = Path.home() / ".config" / "llmmesh" / "credentials.json"
    return Path(env.text("LLMMESH_CLI_CREDENTIALS", str(default)))


class NotLoggedIn(Exception):
    """No usable session: run `llmmesh login`."""


class Session:
    """Saved tokens for one user, with the auth endpoint to refresh them."""

    def __init__(self, path: Path, auth_address: str) -> None:
        self._path = path
        self._auth_address = auth_address

    def save(self, tokens: auth_pb2.TokenPair, username: str) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data = {"username": username, "access_token": tokens.access_token,
                "access_expires": tokens.access_token_expire_time.seconds,
                "refresh_token": tokens.refresh_token}
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)

    def load(self) -> dict[str, object]:
        try:
            data = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise NotLoggedIn("not logged in: run `llmmesh login`") from None
        if not isinstance(data, dict):  # not a file `save` wrote
            raise NotLoggedIn("not logged in: run `llmmesh login`")
        return data

    def forget(self) -> None:
        self._path.unlink(missing_ok=True)

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        """`authorization` metadata with a fresh access token (refreshing if needed)."""
        data = self.load()
        expires = data.get("access_expires")
        if not isinstance(expires, int | float):  # not a file `save` wrote
            raise NotLoggedIn("not logged in: run `llmmesh login`")
        if expires - REFRESH_MARGIN_SECONDS < time.time():
            async with grpc.aio.insecure_channel(self._auth_address) as channel:
                try:
                    refreshed = await auth_pb2_grpc.AuthServiceStub(channel).RefreshToken(
                        auth_pb2.RefreshTokenRequest(refresh_token=str(data["refresh_token"])),
                        timeout=10)
                except grpc.aio.AioRpcError as error:
                    if error.code() == grpc.StatusCode.UNAUTHENTICATED:
                        raise NotLoggedIn("session expired: run `llmmesh login`") from None
                    raise
            self.save(refreshed.tokens, str(data["username"]))
            data = self.load()
        return (("authorization", f"Bearer {data['access_token']}"),)
