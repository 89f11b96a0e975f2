import asyncio
import contextlib
import threading
import time

import pytest

from speech.tts.base import (
    EngineCapabilities,
    SynthChunk,
    SynthesisError,
    TTSEngine,
    UnsupportedFeature,
    VoiceInfo,
    VoiceNotFound,
    VoiceSample,
    astream,
)

CHUNK_SECONDS = 0.03


class SlowEngine(TTSEngine):
    """Produces one 10 ms chunk every CHUNK_SECONDS, recording what happened."""

    name = "slow"
    sample_rate = 8000
    capabilities = EngineCapabilities(speed_range=(0.5, 2.0))

    def __init__(self, n_chunks: int = 20, fail_after: int | None = None) -> None:
        self.n_chunks = n_chunks
        self.fail_after = fail_after
        self.produced = 0
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.thread_names: list[str] = []

    def voices(self):
        return [VoiceInfo(id="only", name="Only")]

    def synthesize(self, text, *, voice=None, speed=1.0, params=None, cancel=None, **_):
        self.check_request(voice=voice, speed=speed)
        self.thread_names.append(threading.current_thread().name)
        try:
            for index in range(self.n_chunks):
                if cancel is not None and cancel.is_set():
                    return
                if self.fail_after is not None and index == self.fail_after:
                    raise SynthesisError("boom")
                time.sleep(CHUNK_SECONDS)
                self.produced += 1
                yield SynthChunk(b"\x00\x00" * 80)
            self.finished.set()
        finally:
            # stopped early by the cancel event or by closing the generator
            if not self.finished.is_set():
                self.cancelled.set()


async def test_astream_delivers_chunks_while_the_engine_is_still_producing():
    engine = SlowEngine(n_chunks=10)
    started = time.perf_counter()
    arrivals, produced_at_arrival = [], []
    async for chunk in astream(engine, "hello"):
        arrivals.append(time.perf_counter() - started)
        produced_at_arrival.append(engine.produced)
        assert len(chunk.pcm) == 160
    assert len(arrivals) == 10
    # the first chunk came after about one chunk's work, not after all ten
    assert produced_at_arrival[0] <= 5
    assert arrivals[-1] - arrivals[0] > 5 * CHUNK_SECONDS
    assert engine.finished.is_set()
    assert engine.thread_names == ["tts-slow"]  # a worker thread, never the event loop


async def test_aclose_stops_the_engine_within_one_chunk():
    engine = SlowEngine(n_chunks=100)
    stream = astream(engine, "hello")
    async with contextlib.aclosing(stream):
        async for _chunk in stream:
            break
    produced_at_close = engine.produced
    assert await asyncio.to_thread(engine.cancelled.wait, 1.0)
    assert engine.produced <= produced_at_close + 1
    assert not engine.finished.is_set()


async def test_cancelling_the_consumer_task_stops_the_engine():
    engine = SlowEngine(n_chunks=100)
    got_one = asyncio.Event()

    async def consume():
        async for _chunk in astream(engine, "hello"):
            got_one.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_one.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(engine.cancelled.wait, 1.0)
    assert engine.produced < 100


async def test_engine_errors_reach_the_consumer_after_the_chunks_before_them():
    engine = SlowEngine(n_chunks=10, fail_after=3)
    received = 0
    with pytest.raises(SynthesisError, match="boom"):
        async for _chunk in astream(engine, "hello"):
            received += 1
    assert received == 3


async def test_validation_errors_surface_on_first_iteration():
    with pytest.raises(VoiceNotFound):
        async for _chunk in astream(SlowEngine(), "hello", voice="missing"):
            pass


async def test_external_cancel_event_stops_the_stream():
    engine = SlowEngine(n_chunks=100)
    cancel = threading.Event()
    received = 0
    async for _chunk in astream(engine, "hello", cancel=cancel):
        received += 1
        if received == 2:
            cancel.set()
    assert received <= 3
    assert engine.cancelled.wait(1.0)


async def test_producer_is_throttled_by_a_slow_consumer():
    engine = SlowEngine(n_chunks=50)
    stream = astream(engine, "hello", max_pending_chunks=2)
    async with contextlib.aclosing(stream):
        await stream.__anext__()
        await asyncio.sleep(15 * CHUNK_SECONDS)
        # one delivered, two pending, one produced and waiting for room
        assert engine.produced <= 4


class NativeAsyncEngine(SlowEngine):
    name = "native"

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    async def asynthesize(self, text, *, voice=None, speed=1.0, params=None, voice_sample=None):
        try:
            for _ in range(100):
                await asyncio.sleep(0.001)
                yield SynthChunk(b"\x01\x00")
        finally:
            self.closed = True


async def test_astream_prefers_a_native_async_engine_and_closes_it():
    engine = NativeAsyncEngine()
    stream = astream(engine, "hi")
    async with contextlib.aclosing(stream):
        async for _chunk in stream:
            break
    assert engine.closed
    assert engine.thread_names == []


def test_check_request_defaults():
    engine = SlowEngine()
    engine.check_request(voice="only")
    with pytest.raises(VoiceNotFound) as info:
        engine.check_request(voice="other")
    assert info.value.voice == "other"
    with pytest.raises(UnsupportedFeature):
        engine.check_request(voice_sample=VoiceSample(b"RIFF"))
    with pytest.raises(ValueError):
        engine.check_request(speed=0)
    assert engine.clamp_speed(5) == 2.0
    assert engine.clamp_speed(0.1) == 0.5
    assert engine.bytes_to_seconds(16000) == 1.0
