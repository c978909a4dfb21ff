"""DocumentLibrary (services/document/library.py): per-user get, paging, delete,
search and collections, and the OrphanJanitor (services/document/janitor.py) that
deletes uncommitted chunks, with an in-memory chunk store and word-vector embeddings.
Every test runs twice: over in-memory records, and over the real DocumentRecords on
the session's Redis (where the per-user keys and Lua scripts live)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from services.document.janitor import JanitorTask, OrphanJanitor, Sweep
from services.document.library import SEARCH_OVERFETCH, CollectionInfo, DocumentLibrary
from services.document.records import DocumentRecord, DocumentRecords
from services.runtime.errors import NotFound
from tests.unit.conftest import new_user
from tests.unit.document_fakes import FakeChunkStore, FakeDocumentRecords, FakeEmbed, word_vector


@dataclass
class Shelf:
    library: DocumentLibrary
    store: FakeChunkStore
    records: DocumentRecords
    embed: FakeEmbed
    clock: float = 1_700_000_000.0

    async def add(self, user: str, texts: Sequence[str], *, filename: str = "doc.txt",
                  collection: str = "default", commit: bool = True) -> DocumentRecord:
        """A document as the Ingestor leaves it: chunks stored, then the record committed."""
        self.clock += 1.0
        document_id = uuid.uuid4().hex
        await self.store.add(user, document_id, collection, filename, 0, texts,
                             [word_vector(t) for t in texts])
        record = DocumentRecord(
            id=document_id, collection=collection, filename=filename,
            content_type="text/plain", size=sum(len(t) for t in texts), chunks=len(texts),
            sha256=hashlib.sha256("".join(texts).encode() + document_id.encode()).hexdigest(),
            create_time=self.clock)
        if commit:
            assert await self.records.commit(user, record) is None
        return record


@pytest.fixture(params=["memory", "redis"])
def shelf(request: pytest.FixtureRequest) -> Shelf:
    if request.param == "memory":
        records: DocumentRecords = FakeDocumentRecords()
    else:
        redis: Redis = request.getfixturevalue("redis")
        records = DocumentRecords(redis)
    store, embed = FakeChunkStore(), FakeEmbed()
    shelf = Shelf(DocumentLibrary(store, records, embed), store, records, embed)
    store.clock = lambda: shelf.clock  # chunks are stamped with the shelf's time
    return shelf


@pytest.fixture
def alice() -> str:
    return new_user()


@pytest.fixture
def bob() -> str:
    return new_user()


# --- get -------------------------------------------------------------------------------

async def test_get_returns_only_the_callers_own_documents(shelf: Shelf, alice: str,
                                                          bob: str) -> None:
    mine = await shelf.add(alice, ["alpha"])
    theirs = await shelf.add(bob, ["beta"])

    assert await shelf.library.get(alice, mine.id) == mine
    with pytest.raises(NotFound) as caught:
        await shelf.library.get(alice, theirs.id)
    assert (caught.value.resource_type, caught.value.resource_name) == (
        "document", f"documents/{theirs.id}")
    with pytest.raises(NotFound):
        await shelf.library.get(alice, uuid.uuid4().hex)


async def test_an_uncommitted_document_does_not_exist(shelf: Shelf, alice: str) -> None:
    pending = await shelf.add(alice, ["alpha"], commit=False)
    with pytest.raises(NotFound):
        await shelf.library.get(alice, pending.id)
    assert await shelf.library.page(alice, 0, 10) == ([], False)


# --- paging ----------------------------------------------------------------------------

async def test_pages_are_newest_first_and_say_whether_more_follow(shelf: Shelf, alice: str,
                                                                  bob: str) -> None:
    docs = [await shelf.add(alice, [f"alpha {n}"], filename=f"{n}.txt") for n in range(5)]
    await shelf.add(bob, ["beta"])
    newest_first = [d.id for d in reversed(docs)]

    async def ids(offset: int, size: int) -> tuple[list[str], bool]:
        records, more = await shelf.library.page(alice, offset, size)
        return [r.id for r in records], more

    assert await ids(0, 2) == (newest_first[0:2], True)
    assert await ids(2, 2) == (newest_first[2:4], True)
    assert await ids(4, 2) == (newest_first[4:], False)
    assert await ids(3, 2) == (newest_first[3:], False)  # ends exactly at the last one
    assert await ids(0, 5) == (newest_first, False)
    assert await ids(9, 2) == ([], False)
    bobs, more = await shelf.library.page(bob, 0, 10)
    assert [r.filename for r in bobs] == ["doc.txt"] and not more


async def test_paging_one_collection(shelf: Shelf, alice: str) -> None:
    work = [await shelf.add(alice, [f"alpha {n}"], collection="work") for n in range(3)]
    await shelf.add(alice, ["beta"], collection="home")

    records, more = await shelf.library.page(alice, 0, 2, collection="work")
    assert [r.id for r in records] == [work[2].id, work[1].id] and more
    records, more = await shelf.library.page(alice, 2, 2, collection="work")
    assert [r.id for r in records] == [work[0].id] and not more
    assert await shelf.library.page(alice, 0, 2, collection="nothing") == ([], False)


# --- delete ----------------------------------------------------------------------------

async def test_delete_removes_the_record_and_only_that_documents_chunks(
        shelf: Shelf, alice: str) -> None:
    gone = await shelf.add(alice, ["alpha one", "alpha two"])
    kept = await shelf.add(alice, ["alpha three"])

    await shelf.library.delete(alice, gone.id)

    with pytest.raises(NotFound):
        await shelf.library.get(alice, gone.id)
    assert [c.document_id for c in shelf.store.of(alice)] == [kept.id]
    assert [r.id for r in (await shelf.library.page(alice, 0, 10))[0]] == [kept.id]
    assert await shelf.records.find_duplicate(alice, "default", gone.sha256) is None
    with pytest.raises(NotFound):  # twice
        await shelf.library.delete(alice, gone.id)


async def test_deleting_someone_elses_document_is_not_found_and_changes_nothing(
        shelf: Shelf, alice: str, bob: str) -> None:
    theirs = await shelf.add(bob, ["beta one", "beta two"])

    with pytest.raises(NotFound) as caught:
        await shelf.library.delete(alice, theirs.id)

    assert caught.value.resource_name == f"documents/{theirs.id}"
    assert await shelf.library.get(bob, theirs.id) == theirs
    assert len(shelf.store.of(bob, theirs.id)) == 2
    assert shelf.store.deleted == []


# --- search ----------------------------------------------------------------------------

async def test_search_ranks_the_callers_committed_chunks(shelf: Shelf, alice: str,
                                                         bob: str) -> None:
    doc = await shelf.add(alice, ["alpha alpha", "alpha beta", "gamma", "delta"])
    await shelf.add(alice, ["alpha alpha alpha"], commit=False)  # mid-ingestion
    await shelf.add(bob, ["alpha alpha"])  # someone else's

    hits = await shelf.library.search(alice, "alpha", 2)

    assert [(h.document_id, h.text) for h in hits] == [(doc.id, "alpha alpha"),
                                                       (doc.id, "alpha beta")]
    assert hits[0].score >= hits[1].score
    assert shelf.embed.calls == [["alpha"]]
    assert shelf.store.queries[0]["n_results"] == 2 + SEARCH_OVERFETCH
    assert shelf.store.queries[0]["user_id"] == alice


async def test_search_min_score_collection_and_document_filters(shelf: Shelf,
                                                                alice: str) -> None:
    work = await shelf.add(alice, ["alpha report", "gamma notes"], collection="work")
    home = await shelf.add(alice, ["alpha recipe"], collection="home")

    strong = await shelf.library.search(alice, "alpha", 10, min_score=0.9)
    assert {h.text for h in strong} == {"alpha report", "alpha recipe"}
    in_home = await shelf.library.search(alice, "alpha", 10, collection="home")
    assert [h.document_id for h in in_home] == [home.id]
    only_work = await shelf.library.search(alice, "alpha", 10, document_ids=[work.id])
    assert {h.document_id for h in only_work} == {work.id} and len(only_work) == 2
    assert await shelf.library.search(alice, "alpha", 10, document_ids=[uuid.uuid4().hex]) == []


async def test_search_finds_nothing_for_a_user_without_documents(shelf: Shelf, alice: str,
                                                                 bob: str) -> None:
    await shelf.add(bob, ["alpha"])
    assert await shelf.library.search(alice, "alpha", 5) == []


async def test_uncommitted_chunks_do_not_crowd_out_committed_results(shelf: Shelf,
                                                                     alice: str) -> None:
    committed = await shelf.add(alice, ["alpha beta"])
    await shelf.add(alice, [f"alpha alpha {n}" for n in range(SEARCH_OVERFETCH + 1)],
                    commit=False)

    hits = await shelf.library.search(alice, "alpha", 1)

    assert [h.document_id for h in hits] == [committed.id]


# --- collections -----------------------------------------------------------------------

async def test_collections_count_documents_and_chunks_per_user(shelf: Shelf, alice: str,
                                                               bob: str) -> None:
    await shelf.add(alice, ["a", "b", "c"], collection="work")
    removed = await shelf.add(alice, ["d"], collection="work")
    await shelf.add(alice, ["e", "f"], collection="home")
    only = await shelf.add(alice, ["g"], collection="zzz")
    await shelf.add(bob, ["h"], collection="bobs")
    await shelf.library.delete(alice, removed.id)
    await shelf.library.delete(alice, only.id)

    assert await shelf.library.collections(alice) == [
        CollectionInfo("home", 1, 2), CollectionInfo("work", 1, 3)]  # empty ones vanish
    assert await shelf.library.collections(bob) == [CollectionInfo("bobs", 1, 1)]


# --- the orphan janitor ----------------------------------------------------------------

HOUR = 3600.0


def janitor(shelf: Shelf, **batches: int) -> OrphanJanitor:
    return OrphanJanitor(shelf.store, shelf.records, min_age=HOUR,
                         clock=lambda: shelf.clock, **batches)


async def test_janitor_deletes_old_orphans_and_keeps_young_ones_and_committed_ones(
        shelf: Shelf, alice: str) -> None:
    old_committed = await shelf.add(alice, ["alpha one", "alpha two"])
    old_orphan = await shelf.add(alice, ["alpha lost", "beta lost", "gamma"], commit=False)
    shelf.clock += HOUR
    young_orphan = await shelf.add(alice, ["alpha in flight"], commit=False)
    young_committed = await shelf.add(alice, ["beta"])

    swept = await janitor(shelf).run()

    assert swept == Sweep(users=1, documents=1, chunks=3)
    assert shelf.store.of(alice, old_orphan.id) == []
    assert len(shelf.store.of(alice, old_committed.id)) == 2
    assert len(shelf.store.of(alice, young_committed.id)) == 1
    assert len(shelf.store.of(alice, young_orphan.id)) == 1
    # Once old enough, the young orphan goes too; committed chunks never do.
    shelf.clock += 10 * HOUR
    assert await janitor(shelf).run() == Sweep(users=1, documents=1, chunks=1)
    assert {c.document_id for c in shelf.store.of(alice)} == {old_committed.id,
                                                             young_committed.id}
    assert await janitor(shelf).run() == Sweep(users=1)


async def test_an_orphan_still_receiving_chunks_is_aged_by_its_newest_chunk(
        shelf: Shelf, alice: str) -> None:
    """An ingestion in flight keeps storing batches: its first ones may be old."""
    in_flight = await shelf.add(alice, ["alpha first batch"], commit=False)
    shelf.clock += HOUR
    await shelf.store.add(alice, in_flight.id, "default", "doc.txt", 1, ["beta next"],
                          [word_vector("beta next")])

    assert await janitor(shelf).run() == Sweep(users=1)
    assert len(shelf.store.of(alice, in_flight.id)) == 2


async def test_janitor_sweeps_many_users_in_bounded_batches(shelf: Shelf) -> None:
    users = [new_user() for _ in range(12)]
    kept: dict[str, set[str]] = {}
    for user in users:
        kept[user] = {(await shelf.add(user, ["alpha", "beta"])).id}
        for n in range(3):
            await shelf.add(user, [f"gamma {n}", f"delta {n}"], commit=False)
    shelf.clock += HOUR + 100

    swept = await janitor(shelf, scan_batch=3, delete_batch=2).run()

    assert swept == Sweep(users=12, documents=36, chunks=72)
    for user in users:
        assert {c.document_id for c in shelf.store.of(user)} == kept[user]
        assert len(shelf.store.of(user)) == 2
    assert all(limit == 3 for _, _, limit in shelf.store.scans)
    assert all(len(ids) <= 2 for _, ids in shelf.store.batch_deletes)


async def test_chunks_without_a_creation_time_are_aged_from_first_sight(
        shelf: Shelf, alice: str) -> None:
    """Chunks stored before chunks carried created_at: swept one age after first seen."""
    store = shelf.store
    store.clock = lambda: None  # type: ignore[assignment,return-value]
    legacy = await shelf.add(alice, ["alpha legacy"], commit=False)
    committed = await shelf.add(alice, ["alpha kept"])
    sweeper = janitor(shelf)

    assert await sweeper.run() == Sweep(users=1)  # first seen now
    shelf.clock += HOUR - 1
    assert await sweeper.run() == Sweep(users=1)
    shelf.clock += 1
    assert await sweeper.run() == Sweep(users=1, documents=1, chunks=1)
    assert [c.document_id for c in store.of(alice)] == [committed.id]
    assert legacy.id not in {c.document_id for c in store.of(alice)}


async def test_search_is_unchanged_by_a_sweep(shelf: Shelf, alice: str) -> None:
    committed = [await shelf.add(alice, [f"alpha {n}"]) for n in range(3)]
    await shelf.add(alice, [f"alpha alpha {n}" for n in range(SEARCH_OVERFETCH * 3)],
                    commit=False)
    shelf.clock += HOUR
    before = await shelf.library.search(alice, "alpha", 3)

    assert (await janitor(shelf).run()).documents == 1

    assert await shelf.library.search(alice, "alpha", 3) == before
    assert {h.document_id for h in before} == {r.id for r in committed}


async def test_a_failing_user_does_not_stop_the_sweep(shelf: Shelf, alice: str,
                                                      bob: str) -> None:
    await shelf.add(alice, ["alpha"], commit=False)
    await shelf.add(bob, ["beta"], commit=False)
    shelf.clock += HOUR
    real_scan = shelf.store.scan

    async def scan(user_id: str, offset: int, limit: int) -> list[tuple[str, float | None]]:
        if user_id == alice:
            raise ConnectionError("chroma went away")
        return await real_scan(user_id, offset, limit)

    shelf.store.scan = scan  # type: ignore[method-assign]
    assert await janitor(shelf).run() == Sweep(users=1, documents=1, chunks=1)
    assert shelf.store.of(bob) == []
    assert len(shelf.store.of(alice)) == 1


async def test_janitor_task_sweeps_once_started_and_stops_cleanly(shelf: Shelf,
                                                                  alice: str) -> None:
    orphan = await shelf.add(alice, ["alpha"], commit=False)
    shelf.clock += HOUR
    task = JanitorTask(janitor(shelf), interval=HOUR)
    swept = asyncio.Event()
    real_delete = shelf.store.delete_documents

    async def delete(user_id: str, document_ids: Sequence[str]) -> None:
        await real_delete(user_id, document_ids)
        swept.set()

    shelf.store.delete_documents = delete  # type: ignore[method-assign]
    task.start()
    await swept.wait()  # the first pass runs at start, then the task waits an interval
    await task.stop()
    await task.stop()  # idempotent
    assert shelf.store.of(alice, orphan.id) == []
