"""Group commit of recording chunks: one transaction for every chunk waiting, across sessions.

Every live recording of a worker hands its chunks to this process's one `GroupCommit`. While
a commit is in flight, chunks that arrive wait; when it returns they all go in the next one
(`services.recording_chunks_add`: one locking SELECT, one batched INSERT, one batched UPDATE,
one commit, whatever the number of chunks and recordings). A chunk's answer is set only
once its group is committed, so an acknowledgement still means durable (docs/recordings.md
"What is stored"); a refused chunk fails only itself; a database error fails the group.

The same design as WS /ws/audio's (ingest/session.py, `streams.services.chunk_ingest_group`),
with one writer per process instead of one per socket: a recorder sends a small chunk every
20 ms, so the group that amortizes the commit is made of many recorders' chunks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import close_old_connections

from recordings import services
from streams.errors import ApiError
from streams.runtime import runtime

logger = logging.getLogger(__name__)

# A group never holds more than this (the rest waits for the next commit): bounds one
# transaction's statements and memory, and an ack's wait behind a burst.
MAX_GROUP_CHUNKS = 512
MAX_GROUP_BYTES = 8 * 1024 * 1024
# Groups one executor job commits before it gives the writer back (see GroupCommit).
MAX_GROUPS_PER_JOB = 8
# A job with nothing left to commit looks again LINGER_STEPS times, LINGER_STEP_S apart,
# unless other work waits for the executor: starting a job costs the loop a thread wake-up
# (most of a small group's cost on the loop, bench/recordings.py), looking costs it nothing.
LINGER_STEP_S = 0.0005
LINGER_STEPS = 2

Outcome = services.ChunkAck | ApiError | BaseException


class Pending:
    """One chunk waiting for its group: `outcome` is set (and `done`) once it committed or
    was refused; `on_done` (the session's) is called then, on the loop."""

    __slots__ = ("chunk", "done", "on_done", "outcome")

    def __init__(self, chunk: services.ChunkIn, on_done: Callable[[], Any]) -> None:
        self.chunk = chunk
        self.on_done = on_done
        self.outcome: Outcome | None = None
        self.done = False


class GroupCommit:
    """The process's chunk writer, bound to the running loop on first use (daphne has one
    loop; each test has its own).

    A commit runs as a job on the runtime's database executor (SQLite's one writer thread,
    or PostgreSQL's pool) that takes the waiting chunks itself, commits them, hands the
    answers to the loop, and goes on with what arrived meanwhile: under load the loop pays
    one thread hand-off per job, not per group. A job ends when nothing waits, or after
    MAX_GROUPS_PER_JOB groups so that other work queued on the writer (a release) is not
    held behind a stream of recordings; the loop then starts the next one.
    """

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[Pending] = []
        self._lock = threading.Lock()  # _waiting: the loop appends, the job takes
        self._job: asyncio.Future | None = None
        self.groups = 0  # commits made (tests and benchmarks read it)
        self.chunks = 0
        self.jobs = 0

    def submit(self, chunk: services.ChunkIn, on_done: Callable[[], Any]) -> Pending:
        """Queue a chunk for the next group. Returns at once; `on_done` says when it is
        answered (on the loop)."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop, self._waiting, self._job = loop, [], None
        pending = Pending(chunk, on_done)
        with self._lock:
            self._waiting.append(pending)
        if self._job is None:
            self._start(loop)
        return pending

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.jobs += 1
        job = loop.run_in_executor(runtime.executor, self._commit_waiting, loop)
        self._job = job
        job.add_done_callback(self._job_done)

    def _job_done(self, job: asyncio.Future) -> None:
        if job is not self._job:
            return  # a job of a previous loop
        self._job = None
        if not job.cancelled() and (error := job.exception()) is not None:
            logger.error("recordings: the commit job failed", exc_info=error)
        with self._lock:
            waiting = bool(self._waiting)
        if waiting and self.loop is not None and not self.loop.is_closed():
            self._start(self.loop)

    def _commit_waiting(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the database executor: commit groups while chunks wait (bounded)."""
        executor = runtime.executor
        for _ in range(MAX_GROUPS_PER_JOB):
            with self._lock:
                group = self._take()
            lingered = 0
            while not group and lingered < LINGER_STEPS and not _others_queued(executor):
                # The loop would pay a thread wake-up to start the next job: the chunks
                # that arrive in the next moment are taken from here instead.
                time.sleep(LINGER_STEP_S)
                lingered += 1
                with self._lock:
                    group = self._take()
            if not group:
                return
            try:
                outcomes: list[Any] = services.recording_chunks_add([p.chunk for p in group])
            except Exception as error:
                # Nothing of the group is stored: each of its chunks is told so.
                logger.exception("recordings: committing %d chunks failed", len(group))
                outcomes = [error] * len(group)
            finally:
                # Returns pooled PostgreSQL connections; keeps SQLite's per-thread one.
                close_old_connections()
            try:
                loop.call_soon_threadsafe(self._answer_group, group, outcomes)
            except RuntimeError:
                return  # the loop is closed: nobody is left to answer

    def _answer_group(self, group: list[Pending], outcomes: list[Any]) -> None:
        self.groups += 1
        self.chunks += len(group)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "recordings: group of %d (%d chunks in %d groups, %d jobs so far)",
                len(group),
                self.chunks,
                self.groups,
                self.jobs,
            )
        for pending, outcome in zip(group, outcomes, strict=True):
            pending.outcome = outcome
            pending.done = True
            try:
                pending.on_done()
            except Exception:
                logger.exception("recordings: answering a chunk failed")

    def _take(self) -> list[Pending]:
        # Under self._lock.
        group: list[Pending] = []
        size = 0
        for pending in self._waiting:
            if group and (
                len(group) >= MAX_GROUP_CHUNKS or size + len(pending.chunk.data) > MAX_GROUP_BYTES
            ):
                break
            group.append(pending)
            size += len(pending.chunk.data)
        self._waiting = self._waiting[len(group) :]
        return group


def _others_queued(executor: Any) -> bool:
    """Whether other work waits for the executor (SQLite's writer, or the pool's threads)."""
    work = getattr(executor, "_queue", None) or getattr(executor, "_work_queue", None)
    return work is None or not work.empty()


group_commit = GroupCommit()
