"""A team's budget on Redis Cluster: the team's keys and the user's live on different
nodes (no one script takes both), and 50 concurrent holds still never overshoot."""

from __future__ import annotations

import uuid

from redis.cluster import key_slot

from services.auth import quota, teams
from tests.teams.test_team_budget import (
    test_an_expired_hold_charges_user_and_team_its_checkpoint,
    test_both_budgets_tight_under_contention_and_no_team_hold_leaks,
    test_extension_draws_on_the_team_budget,
    test_fifty_concurrent_holds_from_fifty_members_never_overshoot,
    test_settle_charges_user_team_and_member_once,
)

__all__ = [
    "test_an_expired_hold_charges_user_and_team_its_checkpoint",
    "test_both_budgets_tight_under_contention_and_no_team_hold_leaks",
    "test_extension_draws_on_the_team_budget",
    "test_fifty_concurrent_holds_from_fifty_members_never_overshoot",
    "test_settle_charges_user_team_and_member_once",
]


def _slots(*keys: str) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


def test_each_script_touches_one_slot() -> None:
    team, user = uuid.uuid4().hex, uuid.uuid4().hex
    assert len(_slots(*quota._team_keys(team, "2026-01"))) == 1
    assert len(_slots(*teams._keys(team))) == 1
    assert len(_slots(*teams._keys(uuid.uuid4().hex), *teams._keys(team))) == 1
    # A team's budget is not tied to its members' slots (nor to other teams').
    spread = _slots(*(quota._team_keys(uuid.uuid4().hex, "2026-01")[0] for _ in range(50)))
    assert len(spread) > 1 and quota._team_keys(team, "2026-01")[0] != quota._keys(
        user, "2026-01")[0]
