"""Registration, login, token refresh and logout: the auth domain, free of gRPC."""

from __future__ import annotations

from dataclasses import dataclass

from services.auth.access_tokens import AccessTokenIssuer, IssuedAccessToken
from services.auth.passwords import PasswordHasher
from services.auth.refresh_tokens import IssuedRefreshToken, RefreshRefused, RefreshTokenStore
from services.auth.users import DuplicateUser, UserRecord, UserStore
from services.auth.validation import check_registration, password_too_long
from services.runtime.errors import AlreadyExists, FieldViolation, Unauthenticated, check_fields

LOGIN_REFUSED = "invalid username or password"


@dataclass(frozen=True)
class Session:
    """What a successful login or refresh hands back."""

    user: UserRecord
    access: IssuedAccessToken
    refresh: IssuedRefreshToken


class Accounts:
    """The auth use cases."""

    def __init__(self, users: UserStore, passwords: PasswordHasher,
                 access_tokens: AccessTokenIssuer, refresh_tokens: RefreshTokenStore) -> None:
        self._users = users
        self._passwords = passwords
        self._access_tokens = access_tokens
        self._refresh_tokens = refresh_tokens

    async def register(self, username: str, email: str, password: str) -> UserRecord:
        check_registration(username, email, password)
        if await self._users.username_taken(username):  # cheap early answer; the script decides
            raise AlreadyExists("user", username, reason="USERNAME_TAKEN",
                                message=f"username {username!r} is already taken")
        password_hash = await self._passwords.hash(password)
        try:
            return await self._users.create(username, email, password_hash)
        except DuplicateUser as duplicate:
            if duplicate.field == "username":
                raise AlreadyExists("user", username, reason="USERNAME_TAKEN",
                                    message=f"username {username!r} is already taken") from None
            raise AlreadyExists("user", email, reason="EMAIL_TAKEN",
                                message="email is already registered") from None

    async def login(self, username_or_email: str, password: str) -> Session:
        check_fields([
            FieldViolation("username", "is required") if not username_or_email else None,
            FieldViolation("password", "is required") if not password
            else password_too_long(password, "password"),
        ])
        user = await self._users.find(username_or_email)
        # Unknown user and wrong password cost one bcrypt check each and answer alike.
        if not await self._passwords.verify(password, user.password_hash if user else None):
            raise Unauthenticated(LOGIN_REFUSED, reason="INVALID_CREDENTIALS")
        assert user is not None
        refresh = await self._refresh_tokens.issue(user.id)
        return Session(user=user, access=self._access_tokens.issue(user.id, user.username),
                       refresh=refresh)

    async def refresh(self, refresh_token: str) -> Session:
        check_fields([FieldViolation("refresh_token", "is required") if not refresh_token
                      else None])
        try:
            user_id, refresh = await self._refresh_tokens.rotate(refresh_token)
        except RefreshRefused as refused:
            raise _refresh_refused(refused) from None
        user = await self._users.get(user_id)
        if user is None:
            raise Unauthenticated("refresh token is not valid", reason="REFRESH_TOKEN_INVALID")
        return Session(user=user, access=self._access_tokens.issue(user.id, user.username),
                       refresh=refresh)

    async def logout(self, user_id: str, refresh_token: str) -> None:
        check_fields([FieldViolation("refresh_token", "is required") if not refresh_token
                      else None])
        try:
            await self._refresh_tokens.revoke_family(refresh_token, user_id)
        except RefreshRefused as refused:
            raise _refresh_refused(refused) from None

    async def user(self, user_id: str) -> UserRecord | None:
        return await self._users.get(user_id)


def _refresh_refused(refused: RefreshRefused) -> Unauthenticated:
    if refused.reason == "reused":
        return Unauthenticated("refresh token was already used; the session is revoked",
                               reason="REFRESH_TOKEN_REUSED")
    if refused.reason == "revoked":
        return Unauthenticated("the session of this refresh token was revoked",
                               reason="REFRESH_TOKEN_REVOKED")
    return Unauthenticated("refresh token is not valid", reason="REFRESH_TOKEN_INVALID")
