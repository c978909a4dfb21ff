"""The operation store and the ingestion queue on a real 3-master Redis Cluster: every
script's keys share one hash tag (the user's, or the queue's), so each runs on one node;
an operation ends once, whichever ending comes first."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from google.rpc import code_pb2, status_pb2

from mesh.redis_cluster import LocalRedisCluster
from services.document.operations import OperationStore
from services.document.queue import IngestQueue, stream_key
from services.document.records import DocumentRecord, DocumentRecords
from services.runtime.redis_client import RedisClient, redis_client


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRedisCluster]:
    found = LocalRedisCluster(tmp_path_factory.mktemp("operations-cluster"), masters=3)
    found.start()
    yield found
    found.stop()


@pytest.fixture
async def client(cluster: LocalRedisCluster) -> AsyncIterator[RedisClient]:
    made = redis_client(cluster.url)
    yield made
    await made.aclose()


async def test_an_operation_lives_and_ends_once_on_the_cluster(client: RedisClient) -> None:
    records = DocumentRecords(client)
    store = OperationStore(client, records, upload_ttl_seconds=60, retention_seconds=60)
    user = uuid.uuid4().hex
    created = await store.create(user, "a.txt", "notes", "", b"\x00bytes\xff")
    assert (created.size, created.done) == (7, False)
    assert await store.upload(user, created.id) == b"\x00bytes\xff"
    assert await store.start(user, created.id) == 1
    assert await store.progress(user, created.id, 4, 8, 16) == "open"

    record = DocumentRecord(id=created.document_id, collection="notes", filename="a.txt",
                            content_type="text/plain", size=7, chunks=16, sha256="cd" * 32,
                            create_time=time.time())
    assert await store.commit(user, created.id, record) == ""
    assert await store.commit(user, created.id, record) == "committed"  # a retry's answer
    cancelled = status_pb2.Status(code=code_pb2.CANCELLED, message="late")
    assert not await store.fail(user, created.id, cancelled, cancelled=True)
    ended = await store.get(user, created.id)
    assert ended is not None and ended.done and ended.error is None
    assert (ended.result_document, ended.stage) == (created.document_id, 6)
    assert await store.upload(user, created.id) is None
    assert await records.committed(user, [created.document_id]) == {created.document_id}
    assert await store.progress(user, created.id, 5, 16, 16) == "done"
    assert [s.id for s in (await store.page(user, 0, 10))[0]] == [created.id]

    other = await store.create(user, "b.txt", "notes", "", b"more")
    assert await store.delete(user, other.id) == -1  # still running
    assert await store.fail(user, other.id, cancelled, cancelled=True)
    late = DocumentRecord(id=other.document_id, collection="notes", filename="b.txt",
                          content_type="text/plain", size=4, chunks=1, sha256="ef" * 32,
                          create_time=time.time())
    assert await store.commit(user, other.id, late) == "closed"
    assert await records.committed(user, [other.document_id]) == set()
    assert await store.delete(user, other.id) == 1
    assert await store.get(user, other.id) is None


async def test_the_queue_hands_out_claims_and_acknowledges_on_the_cluster(
        client: RedisClient, tmp_path: Path) -> None:
    stream = stream_key(str(tmp_path))
    first = IngestQueue(client, stream, claim_idle_seconds=0.5, consumer="first")
    second = IngestQueue(client, stream, claim_idle_seconds=0.5, consumer="second")
    await first.ensure_group()
    await second.ensure_group()  # the group exists already: fine
    await first.add("u1", "op1")
    (job,) = await first.read(5, 0.1)
    assert (job.user_id, job.operation_id) == ("u1", "op1")
    assert await second.read(5, 0.1) == []  # delivered once
    assert await second.claim_stale(5) == []  # fresh: not claimable yet
    deadline = time.monotonic() + 10
    while not (claimed := await second.claim_stale(5)):  # idle past 0.5 s: taken over
        assert time.monotonic() < deadline
    assert claimed == [job]
    assert await first.pending() == [(job.entry_id, "second")]
    await second.ack(job)
    assert await first.pending() == []
    assert await client.xlen(stream) == 0


async def test_an_intent_is_queued_once_whoever_queues_it_on_the_cluster(
        client: RedisClient, tmp_path: Path) -> None:
    queue = IngestQueue(client, stream_key(str(tmp_path)), claim_idle_seconds=0.5)
    await queue.ensure_group()
    await queue.intend("u1", "op1", 100.0)
    await queue.intend("u2", "op2", 200.0)
    assert await queue.stranded(150.0) == [("u1", "op1", 100.0)]
    # The uploading call queues it: the intent goes with it, in one script.
    assert await queue.add("u1", "op1") is not None
    assert await queue.stranded(150.0) == []
    # A sweeper that read the intent before that finds it gone: no second entry.
    assert await queue.add("u1", "op1", only_if_intended=True) is None
    # A stranded intent is queued by the first who takes it, once.
    assert await queue.add("u2", "op2", only_if_intended=True) is not None
    assert await queue.add("u2", "op2", only_if_intended=True) is None
    assert [(j.user_id, j.operation_id) for j in await queue.read(10, 0.1)] == [
        ("u1", "op1"), ("u2", "op2")]
    await queue.intend("u3", "op3", 300.0)
    await queue.forget("u3", "op3")
    assert await queue.stranded(1e12) == []
