"""Input rules for registration and login, reported as field violations."""

from __future__ import annotations

import re

from services.runtime.errors import FieldViolation, check_fields

USERNAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,31}$")
EMAIL_PATTERN = re.compile(r"^[^@\s]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
                           r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)+$")
EMAIL_MAX_LENGTH = 254
PASSWORD_MIN_BYTES = 8
PASSWORD_MAX_BYTES = 72  # bcrypt ignores anything past 72 bytes: refuse, never truncate


def username_violation(username: str, field: str) -> FieldViolation | None:
    if not username:
        return FieldViolation(field, "is required")
    if not USERNAME_PATTERN.match(username):
        return FieldViolation(field, "must be 3-32 characters of letters, digits, '.', '_' "
                                     "or '-', starting with a letter or digit")
    return None


def email_violation(email: str, field: str) -> FieldViolation | None:
    if not email:
        return FieldViolation(field, "is required")
    if len(email) > EMAIL_MAX_LENGTH or not EMAIL_PATTERN.match(email):
        return FieldViolation(field, "must be an email address like name@example.com "
                                     f"(at most {EMAIL_MAX_LENGTH} characters)")
    return None


def password_violation(password: str, field: str) -> FieldViolation | None:
    if len(password.encode("utf-8")) < PASSWORD_MIN_BYTES:
        return FieldViolation(field, f"must be at least {PASSWORD_MIN_BYTES} bytes")
    return password_too_long(password, field)


def password_too_long(password: str, field: str) -> FieldViolation | None:
    """Login's rule: no password over bcrypt's 72 bytes was ever accepted at registration,
    and bcrypt 5 raises for one (older releases silently truncated), so such a login is
    refused as INVALID_ARGUMENT before any lookup — the same answer for every username."""
    size = len(password.encode("utf-8"))
    if size > PASSWORD_MAX_BYTES:
        return FieldViolation(field, f"must be at most {PASSWORD_MAX_BYTES} bytes of UTF-8 "
                                     f"(bcrypt's limit), got {size}")
    return None


def check_registration(username: str, email: str, password: str) -> None:
    """Raise InvalidArgument listing every problem with a registration."""
    check_fields([
        username_violation(username, "user.username"),
        email_violation(email, "user.email"),
        password_violation(password, "password"),
    ])
