"""Ingestor (services/document/ingestion.py) with fakes at its seams: the embed
callable, the chunk store and the document records; the real parser and Chunker.
The upload size limit lives in DocumentServicer, called directly (no sockets)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import grpc
import pytest
from llmmesh.document.v1 import document_pb2

from services.document.chunking import Chunker
from services.document.ingestion import Ingestor, Progress, Stage, Upload
from services.document.library import DocumentLibrary
from services.document.parsing import MARKDOWN, PDF, PLAIN
from services.document.servicer import DocumentServicer
from services.runtime.context import Principal, principal_var
from services.runtime.errors import InvalidArgument, Unavailable
from tests.document.pdf import make_image_only_pdf, make_pdf
from tests.unit.document_fakes import FakeChunkStore, FakeDocumentRecords, FakeEmbed, word_vector

USER = "a" * 32
OTHER = "b" * 32
CHUNK_SIZE = 200
BATCH = 2


def paragraphs(count: int, tag: str = "") -> bytes:
    """`count` paragraphs of about 150 characters: one chunk each."""
    body = "\n\n".join(f"Paragraph {n}{tag}: alpha beta gamma. " + "filler words " * 9
                       for n in range(count))
    return body.encode()


@dataclass
class Pipeline:
    ingestor: Ingestor
    embed: FakeEmbed
    store: FakeChunkStore
    records: FakeDocumentRecords
    reports: list[Progress]

    def report(self, progress: Progress) -> None:
        self.reports.append(progress)

    async def ingest(self, content: bytes, *, user: str = USER, filename: str = "notes.txt",
                     collection: str = "default", claimed_type: str = "") -> Progress:
        return await self.ingestor.ingest(
            user, Upload(filename, collection, claimed_type, content), self.report)

    def stages(self) -> list[Stage]:
        return [p.stage for p in self.reports]

    def nothing_left(self, user: str = USER) -> bool:
        return self.store.of(user) == [] and self.records.of(user) == []


def pipeline(embed: FakeEmbed | None = None, store: FakeChunkStore | None = None,
             records: FakeDocumentRecords | None = None) -> Pipeline:
    embed = embed or FakeEmbed()
    store = store or FakeChunkStore()
    records = records or FakeDocumentRecords()
    ingestor = Ingestor(Chunker(CHUNK_SIZE, 20), embed, store, records, BATCH)
    return Pipeline(ingestor, embed, store, records, [])


# --- the pipeline --------------------------------------------------------------------

async def test_parse_split_embed_store_then_commit() -> None:
    p = pipeline()
    content = paragraphs(5)
    done = await p.ingest(content)

    assert p.stages() == [Stage.RECEIVED, Stage.PARSED, Stage.CHUNKED, Stage.EMBEDDED,
                          Stage.EMBEDDED, Stage.EMBEDDED, Stage.STORED, Stage.DONE]
    assert [(r.embedded, r.total) for r in p.reports if r.stage is Stage.EMBEDDED] == [
        (2, 5), (4, 5), (5, 5)]
    assert [len(batch) for batch in p.embed.calls] == [2, 2, 1]
    assert done == p.reports[-1]
    assert done.deduplicated is False
    record = done.document
    assert record is not None
    assert record.chunks == 5 and (done.embedded, done.total) == (5, 5)
    assert record.size == len(content)
    assert record.sha256 == hashlib.sha256(content).hexdigest()
    assert (record.filename, record.collection, record.content_type) == (
        "notes.txt", "default", PLAIN)
    assert p.records.of(USER) == [record]
    chunks = p.store.of(USER, record.id)
    assert [c.chunk_index for c in chunks] == [0, 1, 2, 3, 4]
    assert all(c.text.startswith(f"Paragraph {c.chunk_index}:") for c in chunks)
    assert all(c.vector == tuple(word_vector(c.text)) for c in chunks)
    assert all((c.filename, c.collection) == ("notes.txt", "default") for c in chunks)


async def test_no_chunk_is_longer_than_the_chunk_size() -> None:
    p = pipeline()
    one_long_line = ("word " * 400).encode()
    done = await p.ingest(one_long_line)
    assert done.document is not None and done.document.chunks > 5
    assert all(len(c.text) <= CHUNK_SIZE for c in p.store.of(USER))


@pytest.mark.parametrize(("filename", "claimed", "content", "expected"), [
    ("readme.md", "", b"# Title\n\nalpha", MARKDOWN),
    ("notes.txt", MARKDOWN, b"# Title\n\nalpha", MARKDOWN),
    ("notes.txt", "", b"\xef\xbb\xbfplain alpha", PLAIN),
    ("scan.txt", "", make_pdf([["alpha from a PDF"]]), PDF),
])
async def test_the_content_decides_the_type(filename: str, claimed: str, content: bytes,
                                            expected: str) -> None:
    p = pipeline()
    done = await p.ingest(content, filename=filename, claimed_type=claimed)
    assert done.document is not None and done.document.content_type == expected
    assert "alpha" in p.store.of(USER)[0].text


@pytest.mark.parametrize(("content", "claimed", "reason"), [
    (b"", "", "EMPTY_FILE"),
    (b"   \n\t ", "", "NO_TEXT"),
    (b"\x00\x01\x02binary\xff\xfe", "", "UNREADABLE_CONTENT"),
    (b"plain text", PDF, "CONTENT_TYPE_MISMATCH"),
    (b"plain text", "image/png", "UNSUPPORTED_CONTENT_TYPE"),
    (b"%PDF-1.4 broken", "", "CORRUPT_PDF"),
    (make_image_only_pdf(), "", "PDF_WITHOUT_TEXT"),
])
async def test_unusable_content_is_refused_before_anything_is_stored(
        content: bytes, claimed: str, reason: str) -> None:
    p = pipeline()
    with pytest.raises(InvalidArgument) as caught:
        await p.ingest(content, claimed_type=claimed)
    assert caught.value.reason == reason
    assert p.stages() == [Stage.RECEIVED]
    assert p.embed.calls == [] and p.store.adds == 0 and p.records.commits == 0


# --- deduplication -------------------------------------------------------------------

async def test_identical_content_in_the_same_collection_is_deduplicated() -> None:
    p = pipeline()
    first = await p.ingest(paragraphs(3), filename="a.txt")
    embeds = len(p.embed.calls)
    p.reports.clear()

    again = await p.ingest(paragraphs(3), filename="renamed.txt")

    assert again.deduplicated is True
    assert again.document == first.document
    assert p.stages() == [Stage.RECEIVED, Stage.DONE]
    assert len(p.embed.calls) == embeds  # nothing embedded again
    assert len(p.records.of(USER)) == 1 and len(p.store.of(USER)) == 3


async def test_dedup_is_per_collection_and_per_user() -> None:
    p = pipeline()
    first = await p.ingest(paragraphs(2))
    other_collection = await p.ingest(paragraphs(2), collection="work")
    other_user = await p.ingest(paragraphs(2), user=OTHER)
    different = await p.ingest(paragraphs(2, tag="b"))

    ids = {d.document.id for d in (first, other_collection, other_user, different)
           if d.document is not None}
    assert len(ids) == 4
    assert not any(d.deduplicated for d in (other_collection, other_user, different))


async def test_identical_uploads_racing_commit_one_document() -> None:
    store, records = FakeChunkStore(), FakeDocumentRecords()
    arrived: list[str] = []
    both_embedding = asyncio.Event()

    async def embed(texts: Sequence[str]) -> list[list[float]]:
        arrived.append(texts[0])
        if len(arrived) == 2:
            both_embedding.set()
        await both_embedding.wait()  # both passed the dedupe check before either commits
        return [word_vector(t) for t in texts]

    ingestor = Ingestor(Chunker(CHUNK_SIZE, 20), embed, store, records, batch_size=100)
    upload = Upload("same.txt", "default", "", paragraphs(3))
    results = await asyncio.gather(ingestor.ingest(USER, upload), ingestor.ingest(USER, upload))

    assert sorted(r.deduplicated for r in results) == [False, True]
    assert results[0].document == results[1].document
    (record,) = records.of(USER)
    assert {c.document_id for c in store.of(USER)} == {record.id}  # the loser's are gone
    assert len(store.of(USER)) == 3
    assert len(store.deleted) == 1 and store.deleted[0][1] != record.id


# --- all or nothing: failures and cancellation ---------------------------------------

@pytest.mark.parametrize("fail_at", [0, 2], ids=["first-batch", "last-batch"])
async def test_an_embedding_failure_leaves_no_chunk_and_no_record(fail_at: int) -> None:
    outage = Unavailable("the embedding service is unavailable")
    p = pipeline(embed=FakeEmbed(fail_at=fail_at, error=outage))
    with pytest.raises(Unavailable):
        await p.ingest(paragraphs(5))
    assert p.nothing_left()
    assert p.records.commits == 0
    assert Stage.DONE not in p.stages()


@pytest.mark.parametrize("fail_at", [0, 1], ids=["first-batch", "second-batch"])
async def test_a_store_failure_leaves_no_chunk_and_no_record(fail_at: int) -> None:
    p = pipeline(store=FakeChunkStore(fail_add_at=fail_at))
    with pytest.raises(ConnectionError):
        await p.ingest(paragraphs(5))
    assert p.nothing_left()
    assert p.records.commits == 0


async def test_a_commit_failure_leaves_no_chunk() -> None:
    p = pipeline(records=FakeDocumentRecords(fail_commit=ConnectionError("redis is down")))
    with pytest.raises(ConnectionError, match="redis is down"):
        await p.ingest(paragraphs(3))
    assert p.records.commits == 1
    assert p.nothing_left()


async def test_a_failed_cleanup_does_not_hide_the_original_error() -> None:
    p = pipeline(embed=FakeEmbed(fail_at=1, error=Unavailable("embedding down")),
                 store=FakeChunkStore(fail_delete=True))
    with pytest.raises(Unavailable, match="embedding down"):
        await p.ingest(paragraphs(5))
    assert p.records.of(USER) == []  # never committed: searches ignore the stray chunks
    assert len(p.store.deleted) == 1  # the cleanup was attempted


async def test_a_cancelled_ingestion_leaves_no_chunk_and_no_record() -> None:
    embed = FakeEmbed(block_at=1)
    p = pipeline(embed=embed)
    task = asyncio.ensure_future(p.ingest(paragraphs(5)))
    await embed.blocked.wait()  # the first batch is stored, the second is embedding
    assert len(p.store.of(USER)) == 2

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert p.nothing_left()
    assert p.records.commits == 0
    assert p.stages()[-1] is Stage.EMBEDDED


# --- the upload size limit (enforced by the servicer, before the Ingestor) ------------

LIMIT = 64


class _Context:
    """Nothing in CreateDocument/UploadDocument reads the servicer context."""


@pytest.fixture
def as_user() -> Iterator[None]:
    token = principal_var.set(Principal(kind="user", subject=USER))
    yield
    principal_var.reset(token)


def servicer(p: Pipeline) -> DocumentServicer:
    library = DocumentLibrary(p.store, p.records, p.embed)
    return DocumentServicer(p.ingestor, library, max_upload_bytes=LIMIT)


def context() -> grpc.aio.ServicerContext:
    return cast(grpc.aio.ServicerContext, _Context())


def source(filename: str = "small.txt") -> document_pb2.DocumentSource:
    return document_pb2.DocumentSource(filename=filename)


@pytest.mark.usefixtures("as_user")
async def test_an_upload_at_the_limit_is_ingested_and_one_byte_more_is_refused() -> None:
    p = pipeline()
    at_limit = b"alpha " * (LIMIT // 6) + b"x" * (LIMIT % 6)
    assert len(at_limit) == LIMIT
    document = await servicer(p).CreateDocument(
        document_pb2.CreateDocumentRequest(source=source(), content=at_limit), context())
    assert document.size_bytes == LIMIT

    with pytest.raises(InvalidArgument) as caught:
        await servicer(p).CreateDocument(
            document_pb2.CreateDocumentRequest(source=source(), content=at_limit + b"!"),
            context())
    assert caught.value.reason == "UPLOAD_TOO_LARGE"
    assert caught.value.metadata == {"limit_bytes": str(LIMIT)}
    assert len(p.records.of(USER)) == 1  # only the first


@pytest.mark.usefixtures("as_user")
async def test_a_streamed_upload_stops_reading_once_past_the_limit() -> None:
    p = pipeline()
    pulled: list[int] = []

    async def messages() -> AsyncIterator[document_pb2.UploadDocumentRequest]:
        yield document_pb2.UploadDocumentRequest(source=source())
        for n in range(100):
            pulled.append(n)
            yield document_pb2.UploadDocumentRequest(content=b"x" * 40)

    with pytest.raises(InvalidArgument) as caught:
        await servicer(p).UploadDocument(messages(), context())
    assert caught.value.reason == "UPLOAD_TOO_LARGE"
    assert pulled == [0, 1]  # 80 bytes > 64: the rest was never read
    assert p.embed.calls == [] and p.records.commits == 0
