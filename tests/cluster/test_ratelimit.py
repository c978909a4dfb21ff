"""The rate limit service and its batched counter on Redis Cluster: the existing tests
run unchanged on the cluster client, and a batch whose keys fall in many hash slots is
sent as one script call per slot with every count exact."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError

from gateway.ratelimit.counter import BatchedCounter, Increment
from tests.edge.test_ratelimit_batching import (
    redis,
    test_a_key_that_cannot_be_counted_fails_only_the_requests_that_touch_it,
    test_an_existing_ttl_is_kept,
    test_concurrent_requests_share_one_round_trip_and_every_count_is_exact,
    test_each_request_gets_its_own_counts_in_arrival_order,
    test_requests_beyond_a_full_batch_go_in_the_next_one,
)
from tests.edge.test_ratelimit_service import (
    rules_file,
    stub,
    test_a_burst_of_200_concurrent_requests_lets_exactly_the_limit_through,
    test_concurrent_requests_of_different_callers_each_get_their_own_verdict,
    test_hits_addend_per_request_and_per_descriptor,
    test_statuses_limits_and_headers,
)

__all__ = [
    "redis",
    "rules_file",
    "stub",
    "test_a_burst_of_200_concurrent_requests_lets_exactly_the_limit_through",
    "test_a_key_that_cannot_be_counted_fails_only_the_requests_that_touch_it",
    "test_an_existing_ttl_is_kept",
    "test_concurrent_requests_of_different_callers_each_get_their_own_verdict",
    "test_concurrent_requests_share_one_round_trip_and_every_count_is_exact",
    "test_each_request_gets_its_own_counts_in_arrival_order",
    "test_hits_addend_per_request_and_per_descriptor",
    "test_requests_beyond_a_full_batch_go_in_the_next_one",
    "test_statuses_limits_and_headers",
]


async def test_a_batch_over_many_slots_is_one_call_per_slot_and_counts_exactly(
        redis: RedisCluster) -> None:
    assert isinstance(redis, RedisCluster)
    counter = BatchedCounter(redis)
    run = uuid.uuid4().hex
    users = [f"rl-cluster:{run}:user-{i}" for i in range(10)]
    shared = f"rl-cluster:{run}:route"
    slots = {redis.keyslot(key) for key in [*users, shared]}
    assert len(slots) > 3  # keys of different users land on different slots
    # 200 concurrent requests, 20 per user, each touching its user's counter and one
    # shared counter (so every request spans two slots, mostly).
    requests = [[Increment(users[i % 10], 1, 60), Increment(shared, 1, 60)]
                for i in range(200)]
    counts = await asyncio.gather(*(counter.count(r) for r in requests))
    assert counter.batches_sent == 1
    assert counter.script_calls == len(slots)
    assert sorted(shared_count for _, shared_count in counts) == list(range(1, 201))
    for i in range(10):
        mine = [user_count for n, (user_count, _) in enumerate(counts) if n % 10 == i]
        assert mine == list(range(1, 21))  # arrival order kept within a slot
    # Arrival order across slots, too: request n saw the shared counter at n + 1.
    assert [shared_count for _, shared_count in counts] == list(range(1, 201))
    for key in [*users, shared]:
        assert 0 < await redis.ttl(key) <= 60


async def test_a_key_that_fails_in_one_slot_leaves_other_slots_counted(
        redis: RedisCluster) -> None:
    counter = BatchedCounter(redis)
    run = uuid.uuid4().hex
    broken, fine = f"rl-cluster:{run}:broken", f"rl-cluster:{run}:fine"
    assert redis.keyslot(broken) != redis.keyslot(fine)
    await redis.set(broken, "not a number")
    outcomes = await asyncio.gather(
        counter.count([Increment(fine, 1, 60)]),
        counter.count([Increment(broken, 1, 60), Increment(fine, 1, 60)]),
        counter.count([Increment(fine, 1, 60)]),
        return_exceptions=True)
    assert outcomes[0] == [1] and outcomes[2] == [3]
    assert isinstance(outcomes[1], ResponseError)
    assert counter.batches_sent == 1 and counter.script_calls == 2
