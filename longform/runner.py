"""The background runner of long text jobs, one per process, on the runtime's loop.

``kick()`` (after a job is created, resumed or retried here) and the sweep hook (every
sweeper, every PARLEY_SWEEP_INTERVAL_S: new jobs, and jobs whose worker died and whose lease
ran out) start ``_drain``: it claims jobs one at a time (services.job_claim, a conditional
UPDATE) and runs each from its first unfinished piece. Each piece is synthesized through
speech's one synthesis path (``synthesis_stream``), written to a file, then recorded
(services.piece_commit), so a restart redoes at most the piece that was being synthesized.
When every piece is in, the pieces are joined into the job's response_format file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

from django.conf import settings

from longform import services
from longform.models import LongJob
from speech import encoding
from speech.services import synthesis_stream
from streams.audio import PcmFormat, wav_header
from streams.errors import ApiError
from streams.runtime import runtime

logger = logging.getLogger(__name__)

# This process's name in `LongJob.worker`: unique per process start.
WORKER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
_drainer: asyncio.Task | None = None
_FILE_BLOCK = 1 << 20


def kick() -> None:
    """Start this process's runner if it is idle (call on the runtime's loop)."""
    global _drainer
    loop = asyncio.get_running_loop()
    if _drainer is not None and not _drainer.done() and _drainer.get_loop() is loop:
        return  # it claims again after each job: it will find this one
    _drainer = loop.create_task(_drain(), name="longform-runner")


def running_task() -> asyncio.Task | None:
    """This process's runner task, if it is running (tests wait for it or cancel it)."""
    return _drainer if _drainer is not None and not _drainer.done() else None


def sweep_hook(now: datetime) -> None:
    """A sweeper's look (on a database thread): kick the runner if a job waits for one."""
    loop = runtime.loop
    if loop is None or loop.is_closed():
        return
    if _drainer is not None and not _drainer.done() and _drainer.get_loop() is loop:
        return
    if services.claimable_ids(limit=1):
        loop.call_soon_threadsafe(kick)


async def _drain() -> None:
    lease_s = float(settings.PARLEY_TTS_LONG_LEASE_S)
    while True:
        try:
            job_id = await runtime.run_db(services.job_claim, worker=WORKER, lease_s=lease_s)
        except Exception:
            logger.exception("claiming a long text job failed")
            return
        if job_id is None:
            return
        try:
            await run_job(job_id, lease_s=lease_s)
        except Exception:
            logger.exception("long text job %s failed unexpectedly", job_id)
            with contextlib.suppress(Exception):
                await runtime.run_db(
                    services.job_fail,
                    job_id=job_id,
                    worker=WORKER,
                    error="internal_error",
                    detail="The runner failed; see the server's log.",
                )


class _Lost(Exception):
    """The job is no longer this worker's (paused, cancelled, deleted, taken over)."""


async def _watch(job_id: Any, lease_s: float, task: asyncio.Task) -> None:
    """Renew the lease; cancel ``task`` at once when the job stops being ours (a pause or a
    cancel takes effect within a second, not at the end of the piece)."""
    interval = min(1.0, lease_s / 3)
    while True:
        await asyncio.sleep(interval)
        try:
            mine = await runtime.run_db(
                services.job_renew, job_id=job_id, worker=WORKER, lease_s=lease_s
            )
        except Exception:
            logger.warning("renewing long text job %s failed", job_id, exc_info=True)
            continue
        if not mine:
            task.cancel()
            return


async def run_job(job_id: Any, *, lease_s: float) -> None:
    """Run a claimed job to its end (or until it stops being ours)."""
    state = await runtime.run_db(services.job_for_run, job_id=job_id)
    job: LongJob = state["job"]
    done: set[int] = state["done"]
    pieces = services.plan_pieces(job.text, job.piece_chars)
    work = asyncio.current_task()
    assert work is not None
    watcher = asyncio.get_running_loop().create_task(_watch(job_id, lease_s, work))
    rate = job.pcm_rate or encoding.output_rate(job.response_format, job.sample_rate)
    try:
        for index, span in enumerate(pieces):
            if index in done:
                continue
            started = time.perf_counter()
            pcm, rate = await _synthesize(job, span.text, rate)
            synth_s = time.perf_counter() - started
            path = services.media_path(services.piece_file_name(job_id, index))
            await asyncio.to_thread(_write_atomic, path, pcm)
            committed = await runtime.run_db(
                services.piece_commit,
                job_id=job_id,
                worker=WORKER,
                span=span,
                index=index,
                audio_bytes=len(pcm),
                synth_s=synth_s,
                pcm_rate=rate,
                lease_s=lease_s,
            )
            if not committed:
                raise _Lost
        assert rate is not None
        name = f"{services.job_dir_name(job_id)}/output.{job.response_format}"
        size = await _assemble(job_id, len(pieces), rate, job.response_format, name)
        await runtime.run_db(
            services.job_complete, job_id=job_id, worker=WORKER, output_name=name, output_bytes=size
        )
    except _Lost:
        return  # paused, cancelled or deleted: whoever changed the status wrote it
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            work.uncancel()  # the watcher's doing: the job stopped being ours
            return
        raise  # the process is stopping: the lease runs out and another worker resumes
    except ApiError as error:
        await runtime.run_db(
            services.job_fail,
            job_id=job_id,
            worker=WORKER,
            error=error.code,
            detail=error.detail,
        )
    finally:
        watcher.cancel()


async def _synthesize(job: LongJob, text: str, rate: int | None) -> tuple[bytes, int]:
    """One piece's PCM (16-bit mono) and its rate."""
    parts: list[bytes] = []
    out_rate = rate or 0
    chunks = synthesis_stream(
        text=text,
        model=job.model or None,
        voice=job.voice or None,
        speed=job.speed,
        params=job.params,
        sample_rate=rate,
        job_kind="long",
        endpoint=f"/v1/audio/speech/long/{job.id}",
        response_format="pcm",
    )
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            parts.append(chunk.pcm)
            out_rate = chunk.job.sample_rate
    return b"".join(parts), out_rate


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part")
    with open(partial, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)


async def _pieces_pcm(job_id: Any, count: int) -> AsyncIterator[bytes]:
    for index in range(count):
        path = services.media_path(services.piece_file_name(job_id, index))
        yield await asyncio.to_thread(path.read_bytes)


async def _assemble(job_id: Any, count: int, rate: int, response_format: str, name: str) -> int:
    """Join the pieces into ``name`` (under MEDIA_ROOT) in ``response_format``; its size."""
    target = services.media_path(name)
    partial = target.with_suffix(".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    total = sum(
        services.media_path(services.piece_file_name(job_id, i)).stat().st_size
        for i in range(count)
    )
    with open(partial, "wb") as out:  # noqa: ASYNC230 - local file, written in blocks
        if response_format in ("pcm", "wav"):
            if response_format == "wav":
                out.write(wav_header(PcmFormat(sample_rate_hz=rate), total))
            async for data in _pieces_pcm(job_id, count):
                await asyncio.to_thread(out.write, data)
        else:
            quality = "balanced"
            process = await encoding.spawn(response_format, rate, quality)
            encoded = encoding.encode(_pieces_pcm(job_id, count), process, response_format)
            async with contextlib.aclosing(encoded):
                async for data in encoded:
                    await asyncio.to_thread(out.write, data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, target)
    return target.stat().st_size
