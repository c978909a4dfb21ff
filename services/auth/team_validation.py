"""Input rules for TeamService: resource names, team fields and update masks, each
refused as INVALID_ARGUMENT with field violations."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from services.auth.quota import MONTH_PATTERN, current_month
from services.runtime.errors import FieldViolation, InvalidArgument, check_fields

TEAM_NAME = re.compile(r"^teams/([0-9a-f]{32})$")
MEMBER_NAME = re.compile(r"^teams/([0-9a-f]{32})/members/([0-9a-f]{32}|me)$")
USAGE_NAME = re.compile(r"^teams/([0-9a-f]{32})/usages/([^/]+)$")
USER_NAME = re.compile(r"^users/([0-9a-f]{32})$")
# Chat's model id rule (services/chat/config.py): auth does not know chat's registry,
# so any well-formed id is accepted.
MODEL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
DISPLAY_NAME_MAX = 100
MAX_ALLOWED_MODELS = 100
MAX_TEAM_LIMIT = 10**12
TEAM_FIELDS = ("display_name", "monthly_token_limit", "allowed_models")


def team_id(name: str, field: str) -> str:
    match = TEAM_NAME.match(name)
    if match is None:
        raise InvalidArgument([FieldViolation(field, "must be teams/{team}")])
    return match.group(1)


def member_name(name: str, field: str, caller: str) -> tuple[str, str]:
    """(team id, member's user id) of `teams/{team}/members/{member}` (`me`: caller)."""
    match = MEMBER_NAME.match(name)
    if match is None:
        raise InvalidArgument([FieldViolation(
            field, "must be teams/{team}/members/{member} (a user id, or me)")])
    member = match.group(2)
    return match.group(1), caller if member == "me" else member


def usage_name(name: str) -> tuple[str, str]:
    """(team id, month) of `teams/{team}/usages/{month}`."""
    match = USAGE_NAME.match(name)
    month = match.group(2) if match else ""
    month = current_month() if month == "current" else month
    if match is None or not MONTH_PATTERN.match(month):
        raise InvalidArgument([FieldViolation(
            "name", "must be teams/{team}/usages/{month}, month YYYY-MM or current")])
    return match.group(1), month


def display_name_violation(value: str, field: str) -> FieldViolation | None:
    if not value.strip():
        return FieldViolation(field, "is required")
    if len(value) > DISPLAY_NAME_MAX or any(unicodedata.category(c) == "Cc" for c in value):
        return FieldViolation(field, f"must be at most {DISPLAY_NAME_MAX} characters, "
                                     "without control characters")
    return None


def limit_violation(value: int, field: str) -> FieldViolation | None:
    if not 0 <= value <= MAX_TEAM_LIMIT:
        return FieldViolation(field, f"must be between 0 (no team budget) and "
                                     f"{MAX_TEAM_LIMIT}")
    return None


def models_violation(values: Sequence[str], field: str) -> FieldViolation | None:
    if len(values) > MAX_ALLOWED_MODELS:
        return FieldViolation(field, f"at most {MAX_ALLOWED_MODELS} models")
    bad = [v for v in values if not MODEL_ID.match(v)]
    if bad:
        return FieldViolation(field, f"not model ids: {bad[:5]} (1-64 characters: letters, "
                                     "digits, '.', '_', ':', '-')")
    return None


def check_team(display_name: str, limit: int, models: Sequence[str],
               prefix: str = "team.") -> None:
    check_fields([display_name_violation(display_name, f"{prefix}display_name"),
                  limit_violation(limit, f"{prefix}monthly_token_limit"),
                  models_violation(models, f"{prefix}allowed_models")])


def update_paths(mask: Sequence[str], display_name: str, limit: int,
                 models: Sequence[str]) -> set[str]:
    """The fields an UpdateTeam changes (AIP-134: an empty mask means those set)."""
    if not mask:
        return {f for f, set_ in zip(TEAM_FIELDS, (display_name, limit, models), strict=True)
                if set_}
    if list(mask) == ["*"]:
        return set(TEAM_FIELDS)
    unknown = [p for p in mask if p not in TEAM_FIELDS]
    if unknown:
        raise InvalidArgument([FieldViolation(
            "update_mask", f"unknown or read-only fields {unknown}; updatable: "
                           f"{', '.join(TEAM_FIELDS)}")])
    return set(mask)


def unique(models: Sequence[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(models))
