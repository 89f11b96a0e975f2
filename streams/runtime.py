"""The per-process runtime: ordered broadcasts, release timers and the sweeper.

Daphne has no ASGI lifespan, so `ensure_started()` runs on the first ASGI call and binds
the runtime to that event loop. Timers fire on the loop; their database work runs on a
dedicated executor so it never queues behind slow sync views on asgiref's shared thread.
A release's commit is started at its moment by an alarm thread (`Alarm`), not by the loop:
a loop busy with ingest and fan-out made releases late by as long as its longest step.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import queue
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _db_call(fn: Callable[..., T], args: tuple, kwargs: dict) -> T:
    try:
        return fn(*args, **kwargs)
    finally:
        # Returns pooled PostgreSQL connections; keeps SQLite's per-thread one.
        close_old_connections()


def _checkpoint_forever() -> None:
    interval = settings.PARLEY_SQLITE_CHECKPOINT_S
    while True:
        time.sleep(interval)
        try:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except Exception:
            # Never fatal: SQLite's own auto-checkpoint is the safety net.
            logger.warning("WAL checkpoint failed", exc_info=True)
            with contextlib.suppress(Exception):
                connection.close()


# A broadcast the channel layer refused is tried again this often (see _publisher), and
# one the layer does not answer is given up (and kept for the next try) after this long.
PUBLISH_RETRY_S = 0.25
PUBLISH_TIMEOUT_S = 5.0

CLOCK_PRIORITY = 0
DEFAULT_PRIORITY = 1


class PriorityExecutor(Executor):
    """One worker thread whose queue serves clock jobs (releases) before queued requests."""

    def __init__(self, *, name: str) -> None:
        self._queue: queue.PriorityQueue = queue.PriorityQueue()
        self._order = itertools.count()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, fn: Callable[..., T], /, *args: Any, priority: int = DEFAULT_PRIORITY, **kwargs: Any
    ) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((priority, next(self._order), future, partial(fn, *args, **kwargs)))
        return future

    def _work(self) -> None:
        while True:
            _, _, future, call = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:
                future.set_exception(exc)


class Alarm:
    """One thread that starts calls at their wall-clock moment, whatever the loop is doing.

    `at(moment, start)` runs `start()` on the alarm thread at `moment` (datetime, never
    before it); `start` must only hand work on (submit it to an executor), not do it. The
    thread is started on first use and lives with the process.
    """

    def __init__(self, *, name: str) -> None:
        self._name = name
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    def at(self, moment: datetime, start: Callable[[], None]) -> None:
        with self._wake:
            heapq.heappush(self._heap, (moment.timestamp(), next(self._order), start))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._wake.notify()

    def _run(self) -> None:
        while True:
            with self._wake:
                while True:
                    if not self._heap:
                        self._wake.wait()
                        continue
                    delay = self._heap[0][0] - time.time()
                    if delay <= 0:
                        _, _, start = heapq.heappop(self._heap)
                        break
                    self._wake.wait(delay)
            try:
                start()
            except Exception:
                logger.exception("alarm call failed")


def _chain(source: Future[T], target: Future[T]) -> None:
    """Copy `source`'s outcome into `target` once it is done (unless `target` was cancelled)."""

    def copy(done: Future[T]) -> None:
        if target.cancelled():
            return
        exc = done.exception()
        if exc is not None:
            target.set_exception(exc)
        else:
            target.set_result(done.result())

    source.add_done_callback(copy)


async def _sleep_until(moment: datetime) -> None:
    # Loop clocks round: whoever acts at `moment` also re-checks it before acting.
    delay = (moment - timezone.now()).total_seconds()
    if delay > 0:
        await asyncio.sleep(delay)


class Runtime:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        # (kind, key) -> (timer, is_backup)
        self._timers: dict[tuple[str, str], tuple[asyncio.TimerHandle, bool]] = {}
        self._tasks: list[asyncio.Task] = []
        self._executor: Executor | None = None
        self._clock_executor: ThreadPoolExecutor | None = None
        self._alarm = Alarm(name="parley-alarm")
        self._room_lanes: list[ThreadPoolExecutor] | None = None
        self._checkpointer: threading.Thread | None = None
        self._lock = threading.Lock()
        # Channel names of spectator sockets served by this process (for the heartbeat).
        self.local_spectators: set[str] = set()
        self._publish_failing = False

    # --- lifecycle ---------------------------------------------------------------------

    def ensure_started(self, *, sweeper: bool | None = None) -> None:
        """Bind to the running loop (once per loop) and start the publisher and sweeper."""
        loop = asyncio.get_running_loop()
        if self.loop is loop:
            return
        self.loop = loop
        self._queue = asyncio.Queue()
        self._timers = {}
        self._tasks = [loop.create_task(self._publisher(), name="parley-publisher")]
        if settings.PARLEY_SCHEDULER if sweeper is None else sweeper:
            self._tasks.append(loop.create_task(self._sweeper(), name="parley-sweeper"))
            if connection.vendor == "postgresql":
                self._tasks.append(loop.create_task(self._standby(), name="parley-standby"))
        else:
            self._tasks.append(loop.create_task(self._heartbeat(), name="parley-heartbeat"))
        if connection.vendor == "sqlite":
            self._start_checkpointer()

    def _start_checkpointer(self) -> None:
        """Checkpoint SQLite's WAL from a thread of its own, once per process.

        Left to SQLite, the commit that pushes the WAL past its auto-checkpoint size copies
        the WAL into the database and fsyncs it, inside a chunk's request: 100-200 ms on
        these disks, every few seconds of audio, and the whole p99 of chunk latency
        (docs/benchmarks.md). Here a PASSIVE checkpoint runs every
        PARLEY_SQLITE_CHECKPOINT_S on its own connection; it waits for no reader or writer,
        and sqlite3 releases the GIL while it copies and syncs. The settings raise the
        auto-checkpoint size so SQLite itself steps in only if this thread falls far behind.
        """
        with self._lock:
            if self._checkpointer is not None:
                return
            self._checkpointer = threading.Thread(
                target=_checkpoint_forever, name="parley-checkpoint", daemon=True
            )
        self._checkpointer.start()

    def _usable_loop(self) -> asyncio.AbstractEventLoop | None:
        loop = self.loop
        if loop is None or loop.is_closed() or not loop.is_running():
            return None
        return loop

    @property
    def executor(self) -> Executor:
        with self._lock:
            if self._executor is None:
                if connection.vendor == "sqlite":
                    # SQLite has one writer: one thread queues writes instead of letting them
                    # collide on the file lock and back off for milliseconds.
                    self._executor = PriorityExecutor(name="parley-db")
                else:
                    self._executor = ThreadPoolExecutor(
                        max_workers=settings.PARLEY_DB_THREADS, thread_name_prefix="parley-db"
                    )
            return self._executor

    @property
    def clock_executor(self) -> Executor:
        """Threads for timer and sweeper work, so a release never queues behind ingest.

        SQLite keeps its single writer thread, where clock jobs jump the queue instead.
        """
        if connection.vendor == "sqlite":
            return self.executor
        with self._lock:
            if self._clock_executor is None:
                self._clock_executor = ThreadPoolExecutor(
                    max_workers=settings.PARLEY_CLOCK_THREADS, thread_name_prefix="parley-clock"
                )
            return self._clock_executor

    async def run_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ORM work off the loop, on the runtime's database executor."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(_db_call, fn, args, kwargs))

    async def run_room_db(self, room: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like run_db, for a write to `room` that should keep its arrival order: on
        PostgreSQL each room's writes queue on one of PARLEY_DB_ROOM_LANES single threads (by
        a hash of its name). The room's row lock serializes them anyway; from a pool, a room's
        chunks reached it in whatever order the threads took the lock, and every chunk
        overtaken by the next one took the slow out-of-order path (docs/benchmarks.md,
        "Core"). SQLite's one writer thread keeps the order already."""
        if connection.vendor == "sqlite":
            return await self.run_db(fn, *args, **kwargs)
        with self._lock:
            if self._room_lanes is None:
                self._room_lanes = [
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"parley-room-{n}")
                    for n in range(max(1, settings.PARLEY_DB_ROOM_LANES))
                ]
            lanes = self._room_lanes
        lane = lanes[zlib.crc32(room.encode()) % len(lanes)]
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(lane, partial(_db_call, fn, args, kwargs))

    async def run_clock_db(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Like run_db, for timers and the sweeper: ahead of queued ingest work."""
        call = partial(_db_call, fn, args, kwargs)
        executor = self.clock_executor
        if isinstance(executor, PriorityExecutor):
            return await asyncio.wrap_future(executor.submit(call, priority=CLOCK_PRIORITY))
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    async def run_clock_db_at(
        self, moment: datetime, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        """Like run_clock_db, started at `moment` by the alarm thread instead of by this
        loop: the start does not wait for the loop to come round (under ingest and fan-out
        that wait was the whole p99 of release lateness, docs/benchmarks.md)."""
        call = partial(_db_call, fn, args, kwargs)
        executor = self.clock_executor
        result: Future[T] = Future()

        def start() -> None:
            if not result.set_running_or_notify_cancel():
                return  # the job was cancelled while it waited
            if isinstance(executor, PriorityExecutor):
                _chain(executor.submit(call, priority=CLOCK_PRIORITY), result)
            else:
                _chain(executor.submit(call), result)

        self._alarm.at(moment, start)
        return await asyncio.wrap_future(result)

    # --- broadcasting --------------------------------------------------------------------

    def publish(self, group: str, message: dict[str, Any]) -> None:
        """Send after commit, in commit order. Safe from any thread."""
        loop = self._usable_loop()
        if loop is None:
            # No server loop in this process (a management command, a sync test).
            async_to_sync(get_channel_layer().group_send)(group, message)
            return
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._queue.put_nowait((group, message))
        else:
            loop.call_soon_threadsafe(self._queue.put_nowait, (group, message))

    async def _publisher(self) -> None:
        """Send queued batches in order. A batch the channel layer refused is kept, the
        latest one per room, and sent again as soon as the layer takes anything (or every
        PUBLISH_RETRY_S): a listener given a later id reads the ones before it from the log,
        so the latest batch makes up for all the lost ones of its room."""
        layer = get_channel_layer()
        queue = self._queue
        unsent: dict[str, dict[str, Any]] = {}
        while True:
            if unsent:
                try:
                    group, message = await asyncio.wait_for(queue.get(), PUBLISH_RETRY_S)
                except TimeoutError:
                    await self._resend(layer, unsent)
                    continue
            else:
                group, message = await queue.get()
            if await self._group_send(layer, group, message):
                unsent.pop(group, None)
                if unsent:
                    await self._resend(layer, unsent)
            else:
                unsent[group] = message

    async def _resend(self, layer: Any, unsent: dict[str, dict[str, Any]]) -> None:
        for group, message in list(unsent.items()):
            if not await self._group_send(layer, group, message):
                return
            unsent.pop(group, None)

    async def _group_send(self, layer: Any, group: str, message: dict[str, Any]) -> bool:
        try:
            await asyncio.wait_for(layer.group_send(group, message), PUBLISH_TIMEOUT_S)
        except Exception as exc:
            if not self._publish_failing:
                self._publish_failing = True  # one line per outage, not one per batch
                logger.warning("broadcast to %s failed (%r); will send it again", group, exc)
            return False
        if self._publish_failing:
            self._publish_failing = False
            logger.info("broadcasts resumed")
        return True

    # --- timers ----------------------------------------------------------------------------

    def arm(self, kind: str, key: str, when: datetime) -> None:
        """Run the `kind` job for `key` at `when` on this process's loop. Safe from any thread."""
        loop = self._usable_loop()
        if loop is None:
            return  # no loop here: the sweeper of a server process will do it
        loop.call_soon_threadsafe(self._arm, kind, key, when)

    def _arm(self, kind: str, key: str, when: datetime, *, backup: bool = False) -> None:
        """Arm a timer; a backup (another process's work, announced by its NOTIFY or seen by
        the sweeper) fires later.

        The process that took the final chunk owns the release and fires on time. Sweepers
        of the other processes only stand by, `PARLEY_RELEASE_BACKUP_S` later, in case that
        process died: they do not race the owner for the room lock at the same instant.
        """
        current = self._timers.get((kind, key))
        if current is not None:
            if backup or not current[1]:
                return
            current[0].cancel()  # the owner arrives after the sweeper's backup: owner wins
        fire_at = when
        if backup:
            fire_at += timedelta(seconds=settings.PARLEY_RELEASE_BACKUP_S)
        if kind == "release":
            # Read the release's data ahead of the moment; only its writes are left for then.
            fire_at -= timedelta(seconds=settings.PARLEY_RELEASE_PREPARE_S)
        delay = max(0.0, (fire_at - timezone.now()).total_seconds())
        handle = self.loop.call_later(delay, self._fire, kind, key, when, backup)
        self._timers[(kind, key)] = (handle, backup)

    def _fire(self, kind: str, key: str, when: datetime, backup: bool) -> None:
        self.loop.create_task(self._run_job(kind, key, when, backup))

    async def _run_job(self, kind: str, key: str, when: datetime, backup: bool) -> None:
        from streams import services
        from streams.scheduler import JOBS

        try:
            if kind == "release":
                # Owner and backups alike: the reads first, then only the writes at the
                # moment (a backup's prepare finds a healthy owner's release done).
                plan = await self.run_clock_db(services.release_prepare, turn_id=key)
                if plan is None:
                    return
                moment = plan.release_at
                if backup:
                    moment += timedelta(seconds=settings.PARLEY_RELEASE_BACKUP_S)
                await self.run_clock_db_at(moment, services.release_commit, plan=plan)
                return
            await _sleep_until(when)
            await self.run_clock_db(JOBS[kind], key)
        except Exception:
            logger.exception("%s job for %s failed", kind, key)
        finally:
            self._timers.pop((kind, key), None)

    async def _sweeper(self) -> None:
        from streams.scheduler import presence_touch, sweep_once

        interval = settings.PARLEY_SWEEP_INTERVAL_S
        while True:
            try:
                upcoming = await self.run_clock_db(sweep_once, horizon_s=interval * 2)
                for kind, key, when in upcoming:
                    self._arm(kind, key, when, backup=True)
                await self.run_clock_db(presence_touch, list(self.local_spectators))
            except Exception:
                logger.exception("sweep failed")
            await asyncio.sleep(interval)

    async def _standby(self) -> None:
        """PostgreSQL: stand by as the backup of every release another process announces.

        `LISTEN parley_release` on a session of its own (streams/scheduler.py announces each
        release when its final chunk commits). On every (re)connection, every finalized
        turn is armed too: nothing announced while this was not listening is missed.
        """
        import psycopg

        from streams.scheduler import (
            RELEASE_CHANNEL,
            listen_params,
            parse_announcement,
            pending_releases,
        )

        while True:
            try:
                params = await self.run_clock_db(listen_params)
                async with await psycopg.AsyncConnection.connect(**params) as listener:
                    await listener.execute(f"LISTEN {RELEASE_CHANNEL}")
                    for kind, key, when in await self.run_clock_db(pending_releases):
                        self._arm(kind, key, when, backup=True)
                    async for notice in listener.notifies():
                        due = parse_announcement(notice.payload)
                        if due is not None:
                            self._arm(*due, backup=True)
            except Exception:
                # The database is away: the sweeper covers until this is back.
                logger.warning("release standby lost its connection; retrying", exc_info=True)
            await asyncio.sleep(1.0)

    async def _heartbeat(self) -> None:
        """Without a sweeper here (PARLEY_SCHEDULER=0), still say which sockets and jobs live,
        so the dedicated scheduler does not take them for a crashed worker's."""
        from streams.scheduler import presence_touch

        while True:
            try:
                await self.run_clock_db(presence_touch, list(self.local_spectators))
            except Exception:
                logger.exception("heartbeat failed")
            await asyncio.sleep(settings.PARLEY_SWEEP_INTERVAL_S)


runtime = Runtime()


def run_scheduler_forever(*, interval_s: float | None = None) -> None:
    """`manage.py run_scheduler`: a process that only sweeps and fires timers."""

    async def main() -> None:
        runtime.ensure_started(sweeper=True)
        await asyncio.Event().wait()

    if interval_s is not None:
        settings.PARLEY_SWEEP_INTERVAL_S = interval_s
    asyncio.run(main())
