"""DocumentLibrary (services/document/library.py): per-user get, paging, delete,
search and collections, with an in-memory chunk store and word-vector embeddings.
Every test runs twice: over in-memory records, and over the real DocumentRecords on
the session's Redis (where the per-user keys and Lua scripts live)."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

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
    return Shelf(DocumentLibrary(store, records, embed), store, records, embed)


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
