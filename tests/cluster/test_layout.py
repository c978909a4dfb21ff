"""Redis Cluster plumbing: the URL form, the local cluster, every multi-key script's
keys in one hash slot, and document commit/remove records on the cluster."""

from __future__ import annotations

import time
import uuid

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.cluster import key_slot

from mesh.redis_cluster import LocalRedisCluster
from services.auth import quota, refresh_tokens, users
from services.chat import conversations
from services.document.records import DocumentRecord, DocumentRecords, _Keys
from services.runtime.redis_client import cluster_nodes, redis_client


def one_slot(*keys: str) -> bool:
    return len({key_slot(key.encode()) for key in keys}) == 1


def test_cluster_urls() -> None:
    assert cluster_nodes("redis+cluster://h1:7000,h2:7001") == (
        [("h1", 7000), ("h2", 7001)], None, None, False)
    assert cluster_nodes("rediss+cluster://user:p%40ss@[::1]:7000,h2/0") == (
        [("::1", 7000), ("h2", 6379)], "user", "p@ss", True)
    assert cluster_nodes("redis+cluster://:secret@h1:7000")[1:3] == (None, "secret")
    for bad in ("redis://h1:7000", "redis+cluster://h1:7000/1", "redis+cluster://h1:x",
                "redis+cluster://h1:7000?timeout=1", "redis+cluster://"):
        with pytest.raises(ValueError):
            cluster_nodes(bad)


async def test_the_client_for_a_url() -> None:
    single = redis_client("redis://127.0.0.1:1/0")
    cluster = redis_client("redis+cluster://127.0.0.1:1,127.0.0.1:2")
    assert isinstance(single, Redis) and isinstance(cluster, RedisCluster)
    await single.aclose()
    await cluster.aclose()


def test_every_script_touches_one_slot() -> None:
    user = uuid.uuid4().hex
    assert one_slot(users.user_key(user), users.username_key("Bob"),
                    users.email_key("b@example.com"))
    family = "f" * 22
    assert one_slot(refresh_tokens._family_key(family),
                    refresh_tokens._token_key(family, "rt_a"),
                    refresh_tokens._token_key(family, "rt_b"))
    assert one_slot(*quota._keys(user, "2026-01"))
    assert one_slot(conversations._index_key(user),
                    conversations._conversation_key(user, "c1"),
                    conversations._messages_key(user, "c1"))
    keys = _Keys(user)
    assert one_slot(keys.record("d1"), keys.listing, keys.ids, keys.coll_docs,
                    keys.coll_chunks, keys.dedupe("notes", "ab" * 32),
                    keys.collection_listing("notes"))
    # Different users spread over the cluster.
    assert len({key_slot(quota._keys(f"user-{i}", "2026-01")[0].encode())
                for i in range(20)}) > 10


def test_the_local_cluster_has_three_masters_sharing_the_slots(
        redis_cluster: LocalRedisCluster) -> None:
    import redis

    assert len(redis_cluster.nodes) == 3
    with redis.Redis(port=redis_cluster.nodes[0].port, decode_responses=True) as client:
        assert client.cluster("INFO")["cluster_state"] == "ok"
        ranges = client.cluster("SLOTS")
    by_port: dict[int, int] = {}
    for start, end, (_, port, *_) in ranges:
        by_port[int(port)] = by_port.get(int(port), 0) + int(end) - int(start) + 1
    assert set(by_port) == {node.port for node in redis_cluster.nodes}
    owned = list(by_port.values())
    assert sum(owned) == 16384 and min(owned) > 5000


async def test_document_commit_dedupe_and_remove_on_the_cluster(
        redis_cluster: LocalRedisCluster) -> None:
    client = redis_client(redis_cluster.url)
    records = DocumentRecords(client)
    user = uuid.uuid4().hex
    record = DocumentRecord(id="d1", collection="notes", filename="a.txt",
                            content_type="text/plain", size=10, chunks=3,
                            sha256="ab" * 32, create_time=time.time())
    try:
        assert await records.commit(user, record) is None
        duplicate = DocumentRecord(**{**record.__dict__, "id": "d2"})
        assert await records.commit(user, duplicate) == "d1"  # the same content
        assert await records.page(user, 0, 10) == (["d1"], 1)
        assert await records.page(user, 0, 10, "notes") == (["d1"], 1)
        assert await records.collections(user) == {"notes": (1, 3)}
        assert await records.committed(user, ["d1", "d2"]) == {"d1"}
        assert [r.id for r in await records.get_many(user, ["d1", "d2"])] == ["d1"]
        # Removing (what a rollback or a delete does) takes every index back.
        assert await records.remove(user, "d1")
        assert not await records.remove(user, "d1")
        assert await records.page(user, 0, 10) == ([], 0)
        assert await records.collections(user) == {}
        assert await records.find_duplicate(user, "notes", "ab" * 32) is None
        assert await records.commit(user, duplicate) is None  # free again
    finally:
        await client.aclose()
