"""BatchedCounter over a real Redis: the increments of concurrent requests go out in one
script call, yet every count is exact, each request gets its own counts in arrival order,
and a failure reaches exactly the requests it concerns."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from gateway.ratelimit.counter import BatchedCounter, Increment
from mesh.redis_server import LocalRedis, free_port
from services.runtime.redis_client import RedisClient, redis_client


@pytest.fixture
async def redis(redis_server: LocalRedis) -> AsyncIterator[RedisClient]:
    client = redis_client(redis_server.url)  # one server, or a cluster (tests/cluster)
    yield client
    await client.aclose()


def fresh_key() -> str:
    return f"batch-test:{uuid.uuid4().hex}"


async def test_concurrent_requests_share_one_round_trip_and_every_count_is_exact(
        redis: Redis) -> None:
    counter = BatchedCounter(redis)
    key = fresh_key()
    counts = await asyncio.gather(*(counter.count([Increment(key, 1, 60)])
                                    for _ in range(300)))
    assert sorted(count for [count] in counts) == list(range(1, 301))
    assert counter.batches_sent == 1
    assert 0 < await redis.ttl(key) <= 60


async def test_each_request_gets_its_own_counts_in_arrival_order(redis: Redis) -> None:
    counter = BatchedCounter(redis)
    growing, steady = fresh_key(), fresh_key()
    counts = await asyncio.gather(*(
        counter.count([Increment(growing, hits, 3600), Increment(steady, 1, 60)])
        for hits in range(1, 11)))
    assert counts == [[hits * (hits + 1) // 2, hits] for hits in range(1, 11)]
    assert counter.batches_sent == 1
    assert 60 < await redis.ttl(growing) <= 3600


async def test_requests_beyond_a_full_batch_go_in_the_next_one(redis: Redis) -> None:
    counter = BatchedCounter(redis, max_batch_keys=10)
    key = fresh_key()
    counts = await asyncio.gather(*(counter.count([Increment(key, 1, 60)] * 3)
                                    for _ in range(20)))
    assert sorted(count for three in counts for count in three) == list(range(1, 61))
    assert all(three == list(range(three[0], three[0] + 3)) for three in counts)
    assert counter.batches_sent == 7  # 3 requests (9 keys) per batch


async def test_an_existing_ttl_is_kept(redis: Redis) -> None:
    counter = BatchedCounter(redis)
    key = fresh_key()
    assert await counter.count([Increment(key, 5, 3600)]) == [5]
    assert await counter.count([Increment(key, 1, 60)]) == [6]
    assert await redis.ttl(key) > 60


async def test_a_redis_error_fails_every_request_of_the_batch_each_with_its_own_error(
        ) -> None:
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    counter = BatchedCounter(down)
    try:
        outcomes = await asyncio.gather(*(counter.count([Increment(fresh_key(), 1, 60)])
                                          for _ in range(5)), return_exceptions=True)
    finally:
        await down.aclose()
    assert all(isinstance(outcome, RedisError) for outcome in outcomes)
    assert len({id(outcome) for outcome in outcomes}) == 5
    assert counter.batches_sent == 1


async def test_a_key_that_cannot_be_counted_fails_only_the_requests_that_touch_it(
        redis: Redis) -> None:
    counter = BatchedCounter(redis)
    broken, shared = fresh_key(), fresh_key()
    await redis.set(broken, "not a number")
    outcomes = await asyncio.gather(
        counter.count([Increment(shared, 1, 60)]),
        counter.count([Increment(broken, 1, 60), Increment(shared, 1, 60)]),
        counter.count([Increment(shared, 1, 60)]),
        return_exceptions=True)
    assert outcomes[0] == [1]
    assert isinstance(outcomes[1], ResponseError)
    # Keys are counted one by one: the failed request's other key still counted.
    assert outcomes[2] == [3]
    assert counter.batches_sent == 1


async def test_drain_waits_for_queued_and_sent_requests(redis: Redis) -> None:
    counter = BatchedCounter(redis)
    key = fresh_key()
    first = asyncio.ensure_future(counter.count([Increment(key, 1, 60)]))
    second = asyncio.ensure_future(counter.count([Increment(key, 1, 60)]))
    await asyncio.create_task(counter.drain())  # runs after both requests have queued
    assert first.done() and second.done()
    assert sorted([*first.result(), *second.result()]) == [1, 2]


async def test_lone_requests_are_sent_at_once(redis: Redis) -> None:
    counter = BatchedCounter(redis, flush_interval=3600)
    key = fresh_key()
    for expected in range(1, 4):
        assert await counter.count([Increment(key, 1, 60)]) == [expected]
    assert counter.batches_sent == 3


async def test_under_load_flushes_are_paced_and_drain_sends_at_once(redis: Redis) -> None:
    counter = BatchedCounter(redis, flush_interval=3600)
    key = fresh_key()
    await asyncio.gather(*(counter.count([Increment(key, 1, 60)]) for _ in range(3)))
    assert counter.batches_sent == 1  # three requests in one flush: under load now

    async def while_paced() -> None:
        assert counter.batches_sent == 1  # the next request waits for the interval
        await counter.drain()

    counts, _ = await asyncio.gather(counter.count([Increment(key, 1, 60)]), while_paced())
    assert counts == [4]
    assert counter.batches_sent == 2


async def test_a_request_without_increments_costs_no_round_trip(redis: Redis) -> None:
    counter = BatchedCounter(redis)
    assert await counter.count([]) == []
    assert counter.batches_sent == 0


async def test_limits_are_validated(redis: Redis) -> None:
    for bad in ({"max_in_flight": 0}, {"max_batch_keys": 0}, {"flush_interval": -1}):
        with pytest.raises(ValueError, match="at least 1"):
            BatchedCounter(redis, **bad)
