"""QuotaLedger (services/auth/quota.py) on the session's real Redis: its arithmetic
is Lua scripts over Redis keys, with no in-memory seam. It has no injectable clock
either: the month comes from `current_month()` (patched here for the rollover) and
hold expiry from Redis' own TIME (an expiry is moved into the past here, which is
what the passing of the TTL does)."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
from redis.asyncio import Redis

from services.auth import quota
from services.auth.quota import QuotaLedger, QuotaSnapshot, current_month
from services.runtime.errors import FailedPrecondition, NotFound, ResourceExhausted
from tests.unit.conftest import new_user

LIMIT = 1000
TTL = 60


@pytest.fixture
def ledger(redis: Redis) -> QuotaLedger:
    return QuotaLedger(redis, default_limit=LIMIT, reservation_ttl_seconds=TTL)


@pytest.fixture
def user() -> str:
    return new_user()


async def state(ledger: QuotaLedger, user: str, month: str | None = None) -> tuple[int, int]:
    snapshot = await ledger.snapshot(user, month or current_month())
    return snapshot.used, snapshot.reserved


# --- reserve / extend / settle / release arithmetic ------------------------------------

async def test_reserve_holds_tokens_for_the_current_month(ledger: QuotaLedger,
                                                          user: str) -> None:
    before_ms = time.time() * 1000
    hold, snapshot = await ledger.reserve(user, 300)

    month = current_month()
    assert re.fullmatch(rf"{user}\.{month}\.[A-Za-z0-9_-]{{16,}}", hold.reservation_id)
    assert (hold.user_id, hold.month, hold.tokens) == (user, month, 300)
    assert before_ms + TTL * 1000 - 5000 < hold.expire_time_ms < before_ms + TTL * 1000 + 5000
    assert snapshot == QuotaSnapshot(month, used=0, reserved=300, limit=LIMIT)
    assert snapshot.remaining == 700


async def test_holds_add_up_to_exactly_the_limit_and_not_one_token_more(
        ledger: QuotaLedger, user: str) -> None:
    await ledger.reserve(user, 600)
    _, snapshot = await ledger.reserve(user, 400)
    assert (snapshot.reserved, snapshot.remaining) == (1000, 0)

    with pytest.raises(ResourceExhausted) as caught:
        await ledger.reserve(user, 1)

    error = caught.value
    assert error.reason == "TOKEN_QUOTA_EXHAUSTED"
    assert [v.subject for v in error.violations] == [f"users/{user}"]
    assert error.metadata == {"month": current_month(), "limit": "1000", "used": "0",
                              "reserved": "1000", "requested": "1"}
    assert await state(ledger, user) == (0, 1000)  # the refusal held nothing


async def test_extend_grows_a_hold_within_the_limit(ledger: QuotaLedger, user: str) -> None:
    hold, _ = await ledger.reserve(user, 500)
    await ledger.reserve(user, 200)

    grown, snapshot = await ledger.extend(hold.reservation_id, 300)
    assert grown.tokens == 800 and snapshot.reserved == 1000

    with pytest.raises(ResourceExhausted) as caught:
        await ledger.extend(hold.reservation_id, 1)
    assert caught.value.metadata["requested"] == "1"
    assert await state(ledger, user) == (0, 1000)  # the refused extension changed nothing
    assert (await ledger.settle(hold.reservation_id, 10))[1].reserved == 200  # 800 freed


async def test_settle_charges_the_real_usage_and_frees_the_rest_of_the_hold(
        ledger: QuotaLedger, user: str) -> None:
    hold, _ = await ledger.reserve(user, 900)
    with pytest.raises(ResourceExhausted):
        await ledger.reserve(user, 200)

    _, snapshot = await ledger.settle(hold.reservation_id, 150)

    assert (snapshot.used, snapshot.reserved, snapshot.remaining) == (150, 0, 850)
    _, after = await ledger.reserve(user, 850)  # the unused 750 came back
    assert (after.used, after.reserved, after.remaining) == (150, 850, 0)


async def test_settle_charges_more_than_was_held_when_that_was_used(ledger: QuotaLedger,
                                                                    user: str) -> None:
    hold, _ = await ledger.reserve(user, 100)
    _, snapshot = await ledger.settle(hold.reservation_id, 1200)
    assert (snapshot.used, snapshot.reserved, snapshot.remaining) == (1200, 0, 0)
    with pytest.raises(ResourceExhausted):
        await ledger.reserve(user, 1)


async def test_release_frees_the_hold_without_charging(ledger: QuotaLedger,
                                                       user: str) -> None:
    charged, _ = await ledger.reserve(user, 100)
    await ledger.settle(charged.reservation_id, 40)
    hold, _ = await ledger.reserve(user, 500)

    snapshot = await ledger.release(hold.reservation_id)

    assert (snapshot.used, snapshot.reserved) == (40, 0)
    assert await state(ledger, user) == (40, 0)


@pytest.mark.parametrize(("first", "then"), [
    ("settle", "settle-other"), ("settle", "release"), ("settle", "extend"),
    ("release", "settle"), ("release", "extend"),
])
async def test_a_closed_hold_cannot_be_used_again(ledger: QuotaLedger, user: str,
                                                  first: str, then: str) -> None:
    hold, _ = await ledger.reserve(user, 100)
    await close_or_use(ledger, first, hold.reservation_id)
    before = await state(ledger, user)

    with pytest.raises(FailedPrecondition) as caught:
        await close_or_use(ledger, then, hold.reservation_id)

    assert caught.value.reason == "RESERVATION_CLOSED"
    assert await state(ledger, user) == before  # never charged or freed twice


async def close_or_use(ledger: QuotaLedger, operation: str, reservation_id: str) -> None:
    if operation == "settle":
        await ledger.settle(reservation_id, 60)
    elif operation == "settle-other":
        await ledger.settle(reservation_id, 61)
    elif operation == "release":
        await ledger.release(reservation_id)
    else:
        await ledger.extend(reservation_id, 10)


@pytest.mark.parametrize("operation", ["settle", "release"])
async def test_repeating_the_same_settle_or_release_answers_ok_and_changes_nothing(
        ledger: QuotaLedger, user: str, operation: str) -> None:
    hold, _ = await ledger.reserve(user, 100)
    other, _ = await ledger.reserve(user, 50)
    await close_or_use(ledger, operation, hold.reservation_id)
    before = await state(ledger, user)

    await close_or_use(ledger, operation, hold.reservation_id)  # a retry: no error
    await close_or_use(ledger, operation, hold.reservation_id)

    assert await state(ledger, user) == before == ((60, 50) if operation == "settle"
                                                   else (0, 50))
    if operation == "settle":
        charged, _ = await ledger.settle(hold.reservation_id, 60)
        assert charged == 0  # never charged twice
    assert (await ledger.release(other.reservation_id)).reserved == 0


@pytest.mark.parametrize("reservation_id", [
    "not-a-reservation",
    f"{'f' * 32}.2031-01.{'x' * 22}",  # well formed, never granted
])
async def test_unknown_reservations_are_not_found(ledger: QuotaLedger,
                                                  reservation_id: str) -> None:
    for call in (ledger.settle(reservation_id, 1), ledger.release(reservation_id),
                 ledger.extend(reservation_id, 1)):
        with pytest.raises(NotFound):
            await call


async def test_users_have_separate_budgets(ledger: QuotaLedger, user: str) -> None:
    other = new_user()
    await ledger.reserve(user, LIMIT)
    _, snapshot = await ledger.reserve(other, LIMIT)
    assert snapshot.reserved == LIMIT
    assert await state(ledger, user) == (0, LIMIT)


async def test_a_limit_override_applies_and_zero_restores_the_default(
        ledger: QuotaLedger, user: str) -> None:
    assert await ledger.limit(user) == LIMIT
    assert await ledger.set_limit(user, 50) == 50
    with pytest.raises(ResourceExhausted):
        await ledger.reserve(user, 51)
    hold, snapshot = await ledger.reserve(user, 50)
    assert snapshot.limit == 50
    await ledger.settle(hold.reservation_id, 50)

    assert await ledger.set_limit(user, 0) == LIMIT
    assert await ledger.limit(user) == LIMIT
    _, snapshot = await ledger.reserve(user, LIMIT - 50)
    assert (snapshot.used, snapshot.limit, snapshot.remaining) == (50, LIMIT, 0)


# --- concurrency -----------------------------------------------------------------------

async def test_concurrent_reservations_never_overshoot_the_limit(ledger: QuotaLedger,
                                                                 user: str) -> None:
    outcomes = await asyncio.gather(*(ledger.reserve(user, 30) for _ in range(60)),
                                    return_exceptions=True)

    granted = [o for o in outcomes if isinstance(o, tuple)]
    refused = [o for o in outcomes if isinstance(o, ResourceExhausted)]
    assert (len(granted), len(refused)) == (33, 27)  # 33 * 30 = 990 <= 1000 < 34 * 30
    assert await state(ledger, user) == (0, 990)


async def test_concurrent_extensions_and_reservations_never_overshoot(
        ledger: QuotaLedger, user: str) -> None:
    growing = [(await ledger.reserve(user, 50))[0] for _ in range(8)]
    ending = [(await ledger.reserve(user, 50))[0] for _ in range(2)]  # 500 held in all
    outcomes = await asyncio.gather(
        *(ledger.extend(h.reservation_id, 40) for h in growing),
        *(ledger.reserve(user, 40) for _ in range(10)),
        *(ledger.settle(h.reservation_id, 50) for h in ending),
        return_exceptions=True)

    assert all(isinstance(o, tuple | ResourceExhausted) for o in outcomes)
    assert all(isinstance(o, tuple) for o in outcomes[18:])  # the settles
    granted = sum(isinstance(o, tuple) for o in outcomes[:18])
    assert granted == 12  # 500 free tokens fit twelve 40-token requests, whichever kind
    assert await state(ledger, user) == (100, 400 + 12 * 40)  # used + held = 980 <= 1000


# --- month rollover and hold expiry ----------------------------------------------------

async def test_a_new_month_starts_with_the_whole_limit(ledger: QuotaLedger, user: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(quota, "current_month", lambda now=None: "2031-01")
    spent, _ = await ledger.reserve(user, 700)
    await ledger.settle(spent.reservation_id, 700)
    late, _ = await ledger.reserve(user, 300)  # still held at midnight
    with pytest.raises(ResourceExhausted):
        await ledger.reserve(user, 1)

    monkeypatch.setattr(quota, "current_month", lambda now=None: "2031-02")
    hold, snapshot = await ledger.reserve(user, LIMIT)

    assert hold.month == "2031-02" and ".2031-02." in hold.reservation_id
    assert (snapshot.used, snapshot.reserved) == (0, LIMIT)
    # January's late hold settles into January, whatever the month is now
    _, january = await ledger.settle(late.reservation_id, 250)
    assert (january.month, january.used, january.reserved) == ("2031-01", 950, 0)
    assert await state(ledger, user, "2031-02") == (0, LIMIT)


async def expire_now(redis: Redis, user: str, reservation_id: str) -> None:
    """What the passing of the hold's TTL does: its expiry moves into the past."""
    expiry_key = quota._keys(user, current_month())[2]
    assert await redis.zadd(expiry_key, {reservation_id: 1}, xx=True, ch=True) == 1


async def test_an_expired_hold_stops_counting_and_cannot_be_extended(
        ledger: QuotaLedger, redis: Redis, user: str) -> None:
    hold, _ = await ledger.reserve(user, 800)
    await expire_now(redis, user, hold.reservation_id)

    assert await state(ledger, user) == (0, 0)
    _, snapshot = await ledger.reserve(user, LIMIT)  # its room is free again
    assert snapshot.reserved == LIMIT
    with pytest.raises(FailedPrecondition):
        await ledger.extend(hold.reservation_id, 1)


async def test_a_late_settlement_of_an_expired_hold_still_charges_the_usage(
        ledger: QuotaLedger, redis: Redis, user: str) -> None:
    hold, _ = await ledger.reserve(user, 500)
    other, _ = await ledger.reserve(user, 100)
    await expire_now(redis, user, hold.reservation_id)

    charged, snapshot = await ledger.settle(hold.reservation_id, 120)

    assert charged == 120
    assert (snapshot.used, snapshot.reserved) == (120, 100)  # the live hold is untouched
    assert (await ledger.settle(hold.reservation_id, 120))[0] == 0  # a retry: OK, no charge
    with pytest.raises(FailedPrecondition):
        await ledger.settle(hold.reservation_id, 121)
    assert (await ledger.release(other.reservation_id)).reserved == 0


@pytest.mark.parametrize(("asked", "expected"), [(None, TTL), (5, 5), (0.5, 0.5),
                                                 (10_000, TTL)])
async def test_a_holds_ttl_is_the_asked_one_capped_by_the_configured_one(
        ledger: QuotaLedger, user: str, asked: float | None, expected: float) -> None:
    before_ms = time.time() * 1000
    hold, _ = await ledger.reserve(user, 1, ttl_seconds=asked)
    after_ms = time.time() * 1000
    assert before_ms + expected * 1000 - 50 <= hold.expire_time_ms <= (
        after_ms + expected * 1000 + 50)


# --- checkpoints: an expired hold is charged what was last reported delivered ---------

async def test_an_expired_hold_with_a_checkpoint_is_charged_exactly_the_checkpoint(
        ledger: QuotaLedger, redis: Redis, user: str) -> None:
    hold, _ = await ledger.reserve(user, 300)
    await ledger.extend(hold.reservation_id, 100, delivered_tokens=250)
    await ledger.extend(hold.reservation_id, 100, delivered_tokens=340)
    other, _ = await ledger.reserve(user, 50)
    await expire_now(redis, user, hold.reservation_id)

    assert await state(ledger, user) == (340, 50)  # a read reaps it consistently
    assert await state(ledger, user) == (340, 50)  # and charges it once
    with pytest.raises(FailedPrecondition):
        await ledger.extend(hold.reservation_id, 1, delivered_tokens=400)
    assert await state(ledger, user) == (340, 50)
    assert (await ledger.release(other.reservation_id)).used == 340


async def test_an_expired_hold_without_a_checkpoint_is_charged_nothing(
        ledger: QuotaLedger, redis: Redis, user: str) -> None:
    hold, _ = await ledger.reserve(user, 300)
    await ledger.extend(hold.reservation_id, 100)
    await expire_now(redis, user, hold.reservation_id)
    assert await state(ledger, user) == (0, 0)


async def test_an_expired_holds_charge_never_exceeds_the_hold(
        ledger: QuotaLedger, redis: Redis, user: str) -> None:
    hold, _ = await ledger.reserve(user, 100)
    await ledger.extend(hold.reservation_id, 20, delivered_tokens=500)
    await expire_now(redis, user, hold.reservation_id)
    assert await state(ledger, user) == (120, 0)


async def test_a_refused_extension_still_records_its_checkpoint(
        ledger: QuotaLedger, redis: Redis, user: str) -> None:
    hold, _ = await ledger.reserve(user, 900)
    with pytest.raises(ResourceExhausted):
        await ledger.extend(hold.reservation_id, 200, delivered_tokens=880)
    await expire_now(redis, user, hold.reservation_id)
    assert await state(ledger, user) == (880, 0)


async def test_a_checkpoint_never_moves_back(ledger: QuotaLedger, redis: Redis,
                                             user: str) -> None:
    hold, _ = await ledger.reserve(user, 300)
    await ledger.extend(hold.reservation_id, 10, delivered_tokens=200)
    await ledger.extend(hold.reservation_id, 10, delivered_tokens=150)
    await expire_now(redis, user, hold.reservation_id)
    assert await state(ledger, user) == (200, 0)


@pytest.mark.parametrize(("usage", "charged"), [(400, 60), (300, -40)])
async def test_a_late_settle_replaces_the_checkpoint_charge_with_the_real_usage(
        ledger: QuotaLedger, redis: Redis, user: str, usage: int, charged: int) -> None:
    hold, _ = await ledger.reserve(user, 300)
    await ledger.extend(hold.reservation_id, 100, delivered_tokens=340)
    await expire_now(redis, user, hold.reservation_id)
    assert await state(ledger, user) == (340, 0)

    assert (await ledger.settle(hold.reservation_id, usage))[0] == charged
    assert await state(ledger, user) == (usage, 0)
    assert (await ledger.settle(hold.reservation_id, usage))[0] == 0  # retried: once only
    assert await state(ledger, user) == (usage, 0)


async def test_a_late_release_takes_the_checkpoint_charge_back(
        ledger: QuotaLedger, redis: Redis, user: str) -> None:
    hold, _ = await ledger.reserve(user, 300)
    await ledger.extend(hold.reservation_id, 100, delivered_tokens=120)
    await expire_now(redis, user, hold.reservation_id)
    assert await state(ledger, user) == (120, 0)

    await ledger.release(hold.reservation_id)
    await ledger.release(hold.reservation_id)
    assert await state(ledger, user) == (0, 0)
