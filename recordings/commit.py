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
from collections.abc import Callable
from typing import Any

from recordings import services
from streams.errors import ApiError
from streams.runtime import runtime

logger = logging.getLogger(__name__)

# A group never holds more than this (the rest waits for the next commit): bounds one
# transaction's statements and memory, and an ack's wait behind a burst.
MAX_GROUP_CHUNKS = 512
MAX_GROUP_BYTES = 8 * 1024 * 1024

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
    loop; each test has its own)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiting: list[Pending] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.groups = 0  # commits made (tests and benchmarks read it)
        self.chunks = 0

    def submit(self, chunk: services.ChunkIn, on_done: Callable[[], Any]) -> Pending:
        """Queue a chunk for the next group. Returns at once; `on_done` says when it is
        answered."""
        loop = asyncio.get_running_loop()
        if self.loop is not loop or self._task is None or self._task.done():
            self._bind(loop)
        pending = Pending(chunk, on_done)
        self._waiting.append(pending)
        self._wake.set()  # type: ignore[union-attr]
        return pending

    def _bind(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.loop is not loop:
            self._waiting = []
        self.loop = loop
        self._wake = asyncio.Event()
        self._task = loop.create_task(self._run(), name="parley-recording-commit")

    async def _run(self) -> None:
        wake = self._wake
        assert wake is not None
        while True:
            await wake.wait()
            wake.clear()
            while self._waiting:
                group = self._take()
                try:
                    outcomes: list[Any] = await runtime.run_db(
                        services.recording_chunks_add, [p.chunk for p in group]
                    )
                except asyncio.CancelledError:
                    for pending in group:
                        self._answer(pending, ApiError("internal_error", "Shutting down."))
                    raise
                except Exception as error:
                    # Nothing of the group is stored: each of its chunks is told so.
                    logger.exception("recordings: committing %d chunks failed", len(group))
                    outcomes = [error] * len(group)
                self.groups += 1
                self.chunks += len(group)
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug(
                        "recordings: group of %d (%d chunks in %d groups so far)",
                        len(group),
                        self.chunks,
                        self.groups,
                    )
                for pending, outcome in zip(group, outcomes, strict=True):
                    self._answer(pending, outcome)

    def _take(self) -> list[Pending]:
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

    @staticmethod
    def _answer(pending: Pending, outcome: Outcome) -> None:
        pending.outcome = outcome
        pending.done = True
        try:
            pending.on_done()
        except Exception:
            logger.exception("recordings: answering a chunk failed")


group_commit = GroupCommit()
