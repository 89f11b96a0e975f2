"""eSpeak NG in worker processes (speech.tts.espeak, PARLEY_ESPEAK_PROCESSES): the same audio
and word marks as the in-process thread, requests served side by side, and a consumer that
goes away or a worker that dies frees what it held."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time

import pytest

from speech.tts.base import SynthesisError, astream
from speech.tts.espeak import MAX_PROCESSES, PROCESSES_SETTING, EspeakEngine, process_count

TEXT = (
    "The committee met on a grey Tuesday morning to review the plans for the new harbour. "
    "Everyone agreed that the old pier could not survive another winter of storms, yet nobody "
    "wanted to pay for the repairs. After an hour of polite argument, the chairwoman proposed "
    "a compromise."
)
LONG = TEXT * 60  # ~15,000 characters: several seconds of synthesis


def spoken(engine: EspeakEngine, text: str = TEXT, **options) -> tuple[bytes, list]:
    pcm, marks = b"", []
    for chunk in engine.synthesize(text, **options):
        pcm += chunk.pcm
        marks += chunk.marks
    return pcm, marks


@pytest.fixture(scope="module")
def in_thread() -> EspeakEngine:
    return EspeakEngine(processes=0)


@pytest.fixture(scope="module")
def pooled() -> EspeakEngine:
    return EspeakEngine(processes=2)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"voice": "en-us+f3", "speed": 1.5},
        {"voice": "de", "params": {"pitch": 80, "word_gap": 3}},
    ],
)
def test_a_worker_speaks_exactly_what_the_thread_speaks(in_thread, pooled, options):
    text = TEXT if options.get("voice") != "de" else "Guten Morgen. Wie geht es dir heute?"
    pcm, marks = spoken(pooled, text, **options)
    assert (pcm, marks) == spoken(in_thread, text, **options)
    assert any(mark.kind == "word" for mark in marks)
    assert any(mark.kind == "sentence" for mark in marks)


def test_four_at_once_each_get_their_own_audio_and_marks(in_thread, pooled):
    texts = [TEXT[: 60 + 50 * index] + "." for index in range(4)]
    expected = [spoken(in_thread, text) for text in texts]
    results: list = [None] * 4
    barrier = threading.Barrier(4)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = spoken(pooled, texts[index])

    threads = [threading.Thread(target=run, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == expected


def _jobs(engine: EspeakEngine) -> int:
    assert engine._pool is not None
    return sum(len(worker.jobs) for worker in engine._pool._workers)


def test_a_consumer_that_goes_away_frees_the_worker():
    engine = EspeakEngine(processes=1)
    short = "Is anyone there?"
    spoken(engine, short)  # warm: the worker is up
    start = time.perf_counter()
    spoken(engine, LONG[:3000])
    per_3000 = time.perf_counter() - start  # ~a fifth of LONG's synthesis

    for stop in ("close", "cancel"):
        cancel = threading.Event()
        chunks = engine.synthesize(LONG, cancel=cancel)
        next(chunks)
        if stop == "close":
            chunks.close()
        else:
            cancel.set()
            assert list(chunks) == []  # nothing more once the caller's event is set
        assert _jobs(engine) == 0
        # The only worker is free at once: the short text does not wait behind LONG.
        start = time.perf_counter()
        spoken(engine, short)
        assert time.perf_counter() - start < max(per_3000, 0.5)


def test_a_slow_consumer_parks_its_job_at_30_seconds_of_audio():
    engine = EspeakEngine(processes=1)
    chunks = engine.synthesize(LONG * 3)  # ~50 minutes of audio
    next(chunks)
    time.sleep(2.0)  # the worker runs ahead: far more than 30 s could be synthesized by now
    assert engine._pool is not None
    worker = engine._pool._workers[0]
    (job,) = worker.jobs.values()

    def queued() -> int:
        return sum(len(item.pcm) for item in list(job.out.queue) if hasattr(item, "pcm"))

    # The job is parked before the piece that would pass 30 s not yet taken: at most 30 s,
    # + 1 s reported late, + one piece (400 characters, ~30 s): nowhere near 50 minutes.
    held = queued()
    assert held <= 65 * engine.sample_rate * 2
    time.sleep(1.0)
    assert queued() == held  # and it stays parked
    chunks.close()


def test_a_worker_that_dies_fails_its_jobs_and_is_replaced():
    engine = EspeakEngine(processes=1)
    spoken(engine, "Warm up.")
    assert engine._pool is not None
    worker = engine._pool._workers[0]
    chunks = engine.synthesize(LONG)
    next(chunks)
    os.kill(worker.process.pid, signal.SIGKILL)
    with pytest.raises(SynthesisError, match="exited"):
        for _ in chunks:
            pass
    pcm, marks = spoken(engine, "Still speaking.")
    assert pcm and marks
    assert engine._pool._workers[0] is not worker


def test_the_setting_sizes_the_pool(monkeypatch):
    monkeypatch.delenv(PROCESSES_SETTING, raising=False)
    assert process_count() == min(os.cpu_count() or 1, MAX_PROCESSES)
    monkeypatch.setenv(PROCESSES_SETTING, "0")
    assert process_count() == 0
    monkeypatch.setenv(PROCESSES_SETTING, "3")
    assert process_count() == 3
    monkeypatch.setenv(PROCESSES_SETTING, "1000")
    assert process_count() == MAX_PROCESSES
    monkeypatch.setenv(PROCESSES_SETTING, "lots")
    assert process_count() == min(os.cpu_count() or 1, MAX_PROCESSES)


async def _aspoken(engine: EspeakEngine, text: str) -> tuple[bytes, list]:
    pcm, marks = b"", []
    chunks = astream(engine, text)
    async with contextlib.aclosing(chunks):
        async for chunk in chunks:
            pcm += chunk.pcm
            marks += chunk.marks
    return pcm, marks


def test_asyncio_consumers_get_the_same_audio_four_at_once(in_thread, pooled):
    texts = [TEXT[: 60 + 50 * index] + "." for index in range(4)]
    expected = [spoken(in_thread, text) for text in texts]

    async def scenario() -> list:
        return list(await asyncio.gather(*(_aspoken(pooled, text) for text in texts)))

    assert asyncio.run(scenario()) == expected


def test_an_asyncio_consumer_that_leaves_frees_the_worker():
    engine = EspeakEngine(processes=1)

    async def scenario() -> float:
        await _aspoken(engine, "Warm up.")
        chunks = astream(engine, LONG)
        await anext(chunks)
        await chunks.aclose()
        assert _jobs(engine) == 0
        start = time.perf_counter()
        await _aspoken(engine, "Is anyone there?")
        return time.perf_counter() - start

    assert asyncio.run(scenario()) < 0.5  # LONG alone would take seconds
