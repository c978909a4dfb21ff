"""Document workers: drain the ingestion queue, `concurrency` operations at a time.

Each job runs the ordinary pipeline (services/document/ingestion.py) on the stored
upload, under the operation's fixed document id, and commits through the operation
(the document is committed and the operation ends in one Redis script). It calls the
embedding service with the service credential on the owner's behalf (no user token is
stored with a job, so one that waits or runs for long never finds it expired). While
it runs, a watch loop writes its progress to the operation, keeps its queue entry
claimed and stops it when the operation was cancelled (the pipeline then deletes what
it stored).

Delivery is at least once; the outcome is exactly once:
- a job whose worker died is claimed again by another consumer after `claim_idle`
  seconds and starts over: chunk ids derive from the document id, so a retry rewrites
  the same chunks (upserts), and the commit script refuses a second ending;
- an entry whose operation is already over is acknowledged without work (its leftover
  chunks, if any, are deleted);
- an operation written but never queued (its process died in between) is queued by a
  worker once its intent is older than `claim_idle` (services/document/queue.py).
Unavailable peers (embedding, Chroma, Redis) leave the entry pending for a retry (after
the claim timeout), up to MAX_ATTEMPTS starts; any other error ends the operation with
its status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.exceptions import RedisError

from services.document.chunk_store import ChunkStore
from services.document.ingestion import Embed, Ingestor, Progress, Upload
from services.document.operations import OperationState, OperationStore
from services.document.queue import IngestQueue, Job
from services.document.records import DocumentRecord
from services.runtime.context import Principal, principal_var
from services.runtime.errors import (
    FailedPrecondition,
    Internal,
    LlmmeshError,
    Unavailable,
    to_status,
)

log = logging.getLogger("llmmesh.document.worker")

MAX_ATTEMPTS = 5
READ_BLOCK_SECONDS = 0.5
# An intent whose operation was never written is forgotten after this long (a process
# that noted it and is still about to write it would have to stall this long).
UNWRITTEN_INTENT_SECONDS = 600.0


class OperationClosed(Exception):
    """The operation ended (cancelled, or completed elsewhere) while this job ran."""


@dataclass(frozen=True)
class WorkerSettings:
    concurrency: int
    claim_idle_seconds: float

    @property
    def watch_interval(self) -> float:
        """How often a running job writes progress and renews its claim."""
        return min(0.5, self.claim_idle_seconds / 4)

    @property
    def sweep_interval(self) -> float:
        """How often a process looks for operations written but never queued."""
        return min(30.0, self.claim_idle_seconds / 2)


class IngestWorkers:
    """The consumer loop of one process; `start` returns at once, `stop` cancels it
    (jobs in flight roll back and stay pending for another worker)."""

    def __init__(self, queue: IngestQueue, operations: OperationStore, ingestor: Ingestor,
                 embed: Embed, store: ChunkStore, settings: WorkerSettings) -> None:
        self._queue = queue
        self._operations = operations
        self._ingestor = ingestor
        self._embed = embed
        self._store = store
        self._settings = settings
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[None]] = set()
        # Checked by the loop as well as cancelling it: on Python 3.11 a cancel that
        # lands as a Redis read times out can come back as that timeout (a RedisError
        # the loop retries), and the loop would run on forever.
        self._stopping = False

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="document-ingest-workers")
            self._sweeper = asyncio.create_task(self._sweep_loop(),
                                                name="document-stranded-sweep")

    async def stop(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        sweeper, self._sweeper = self._sweeper, None
        running = [t for t in (task, sweeper) if t is not None] + list(self._jobs)
        for item in running:
            item.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    async def _loop(self) -> None:
        while not self._stopping:
            try:
                await self._queue.ensure_group()
                break
            except RedisError as error:
                log.warning("could not create the ingestion queue (%s); retrying", error)
                await asyncio.sleep(1.0)
        while not self._stopping:
            try:
                await self._fill()
            except asyncio.CancelledError:
                raise
            except RedisError as error:  # an outage: said once a second, no traceback
                log.warning("reading the ingestion queue failed (%s); retrying", error)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("reading the ingestion queue failed; retrying")
                await asyncio.sleep(1.0)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self._settings.sweep_interval)
            if self._stopping:
                return
            try:
                await self.queue_stranded()
            except asyncio.CancelledError:
                raise
            except RedisError as error:
                log.warning("looking for unqueued operations failed (%s)", error)
            except Exception:
                log.exception("looking for unqueued operations failed")

    async def queue_stranded(self, now: float | None = None) -> int:
        """Queue the operations whose process noted them and died before queueing them
        (intents older than the claim timeout); the number queued."""
        now = time.time() if now is None else now
        queued = 0
        for user_id, operation_id, noted in await self._queue.stranded(
                now - self._settings.claim_idle_seconds):
            state = await self._operations.get(user_id, operation_id)
            if state is None:
                if now - noted > UNWRITTEN_INTENT_SECONDS:
                    await self._queue.forget(user_id, operation_id)
            elif state.done or state.attempts > 0:
                await self._queue.forget(user_id, operation_id)
            elif await self._queue.add(user_id, operation_id, only_if_intended=True):
                queued += 1
                log.warning("queued an operation its process never queued",
                            extra={"operation": operation_id})
        return queued

    async def _fill(self) -> None:
        free = self._settings.concurrency - len(self._jobs)
        if free <= 0:
            await asyncio.wait(self._jobs, return_when=asyncio.FIRST_COMPLETED)
            return
        jobs = await self._queue.claim_stale(free)
        if not jobs:
            jobs = await self._queue.read(free, READ_BLOCK_SECONDS)
        for job in jobs if not self._stopping else ():  # left pending for another worker
            task = asyncio.create_task(self._run(job), name=f"ingest-{job.operation_id}")
            self._jobs.add(task)
            task.add_done_callback(self._jobs.discard)

    async def _run(self, job: Job) -> None:
        try:
            if await self._process(job):
                await self._queue.ack(job)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("ingestion job failed; it stays pending for a retry",
                          extra={"operation": job.operation_id})

    async def _process(self, job: Job) -> bool:
        """Run one job; True when its entry is finished with (acknowledge it)."""
        attempts = await self._operations.start(job.user_id, job.operation_id)
        state = await self._operations.get(job.user_id, job.operation_id)
        if attempts == 0 or state is None or state.done:
            await self._drop_leftovers(job, state)
            return True
        content = await self._operations.upload(job.user_id, job.operation_id)
        if content is None:
            await self._operations.fail(job.user_id, job.operation_id, to_status(
                FailedPrecondition("the upload expired before it was ingested",
                                   reason="UPLOAD_EXPIRED")))
            return True
        log.info("ingestion started", extra={"operation": job.operation_id,
                                             "attempt": attempts})
        try:
            await self._ingest(job, state, content)
        except OperationClosed:
            return True
        except RedisError as error:  # the queue and the operation live there: retry later
            log.warning("ingestion attempt %d lost Redis (%s); it will be retried",
                        attempts, error, extra={"operation": job.operation_id})
            return False
        except Unavailable as error:
            if attempts < MAX_ATTEMPTS:
                log.warning("ingestion attempt %d failed (%s); it will be retried",
                            attempts, error.message, extra={"operation": job.operation_id})
                return False
            await self._operations.fail(job.user_id, job.operation_id, to_status(error))
        except LlmmeshError as error:
            await self._operations.fail(job.user_id, job.operation_id, to_status(error))
        except Exception:
            log.exception("ingestion failed", extra={"operation": job.operation_id})
            await self._operations.fail(job.user_id, job.operation_id,
                                        to_status(Internal("ingestion failed")))
        return True

    async def _ingest(self, job: Job, state: OperationState, content: bytes) -> None:
        latest: list[Progress] = []
        upload = Upload(filename=state.filename, collection=state.collection,
                        claimed_type=state.claimed_type, content=content)

        async def embed(texts: Sequence[str]) -> list[list[float]]:
            owner = principal_var.set(Principal(kind="user", subject=job.user_id))
            try:
                return await self._embed(texts)
            finally:
                principal_var.reset(owner)

        async def commit(user_id: str, record: DocumentRecord) -> str | None:
            answer = await self._operations.commit(user_id, job.operation_id, record)
            if answer == "closed":
                raise OperationClosed
            if answer.startswith("dup:"):  # identical content was committed before
                return answer.removeprefix("dup:")
            return None  # committed now, or by an earlier attempt of this operation

        task = asyncio.create_task(self._ingestor.ingest(
            job.user_id, upload, latest.append, document_id=state.document_id,
            commit=commit, embed=embed))
        try:
            await self._watch(job, state.document_id, task, latest)
            done = await task
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if done.document is not None and done.document.id != state.document_id:
            # Identical content was committed before: the operation ends with it.
            await self._operations.succeed(job.user_id, job.operation_id,
                                           done.document.id, deduplicated=True)

    async def _watch(self, job: Job, document_id: str, task: asyncio.Task[Progress],
                     latest: list[Progress]) -> None:
        """Until `task` ends: write its progress, keep the entry
        claimed, and stop it (rolled back) when the operation ended without this
        document (cancelled). When another attempt committed this very document (an
        entry claimed while its first worker still ran), the task runs on: stopping it
        would delete the committed document's chunks; its commit answers 'committed'."""
        interval = self._settings.watch_interval
        while not task.done():
            await asyncio.wait({task}, timeout=interval)
            if task.done() or not latest:
                continue
            last = latest[-1]
            answer = await self._operations.progress(
                job.user_id, job.operation_id, last.stage.value, last.embedded, last.total,
                document_id)
            if answer in {"done", "gone"}:
                log.info("operation ended while ingesting; rolling back",
                         extra={"operation": job.operation_id})
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise OperationClosed
            await self._queue.touch(job)

    async def _drop_leftovers(self, job: Job, state: OperationState | None) -> None:
        """Delete chunks a lost attempt stored for an operation that ended without them."""
        if state is None or state.result_document == state.document_id:
            return
        with contextlib.suppress(Exception):
            await self._store.delete_document(job.user_id, state.document_id)

