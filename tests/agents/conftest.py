"""Shared helpers of the voice agent tests: real speech audio and a /ws/agent client."""

from __future__ import annotations

import base64
import contextlib
import functools
import json
from typing import Any

import numpy as np
import pytest
import soxr
from channels.testing import WebsocketCommunicator

from config.asgi import application


@functools.cache
def speech_pcm(text: str, rate: int = 16000) -> bytes:
    """eSpeak NG saying `text`, PCM16 mono at `rate` (real speech for VAD and Whisper)."""
    from speech.tts.registry import build_engine

    engine = build_engine("espeak")
    pcm = b"".join(chunk.pcm for chunk in engine.synthesize(text))
    samples = np.frombuffer(pcm, dtype="<i2")
    if engine.sample_rate != rate:
        samples = soxr.resample(samples, engine.sample_rate, rate)
    return samples.astype("<i2").tobytes()


def silence(seconds: float, rate: int = 16000) -> bytes:
    return b"\x00\x00" * int(seconds * rate)


def chunks(pcm: bytes, ms: int = 20, rate: int = 16000) -> list[bytes]:
    size = rate * 2 * ms // 1000
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


class AgentClient:
    """A /ws/agent client in the test's event loop; keeps every frame it received."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.ws = communicator
        self.frames: list[dict[str, Any]] = []
        self.session: dict[str, Any] = {}

    async def send(self, **frame: Any) -> None:
        await self.ws.send_to(text_data=json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_to(text_data=text)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_input({"type": "websocket.receive", "bytes": data})

    async def recv(self, timeout: float = 10.0) -> dict[str, Any]:
        frame = await self.ws.receive_json_from(timeout=timeout)
        self.frames.append(frame)
        return frame

    async def until(self, kind: str, timeout: float = 20.0, **match: Any) -> dict[str, Any]:
        """Frames up to and including the first of type `kind` (matching `match`)."""
        import asyncio

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                kinds = [f["type"] for f in self.frames[-30:]]
                raise AssertionError(f"no {kind} {match} within {timeout} s; last: {kinds}")
            frame = await self.recv(timeout=left)
            if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
                return frame

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f["type"] == kind]

    async def stream(self, pcm: bytes, uid: str = "u1", *, start: bool = True, end: bool = True):
        if start:
            await self.send(type="user.audio.start", utteranceId=uid)
        for seq, piece in enumerate(chunks(pcm)):
            await self.send(
                type="user.audio.chunk",
                utteranceId=uid,
                sequence=seq,
                timestamp=seq * 20,
                audio=base64.b64encode(piece).decode(),
            )
        if end:
            await self.send(type="user.audio.end", utteranceId=uid)

    async def close(self) -> None:
        await self.ws.disconnect()


@pytest.fixture
async def agent_connect():
    opened: list[AgentClient] = []

    async def connect(query: str = "") -> AgentClient:
        communicator = WebsocketCommunicator(application, f"/ws/agent?{query}")
        connected, _ = await communicator.connect(timeout=10)
        assert connected
        client = AgentClient(communicator)
        opened.append(client)
        created = await client.recv(timeout=20)
        if created["type"] == "session.created":
            client.session = created["session"]
        return client

    yield connect
    for client in opened:
        with contextlib.suppress(Exception):
            await client.close()
    await quiesce()


async def quiesce(timeout: float = 30.0) -> None:
    """Wait until no agent session writes anything more (before the test's tables are
    flushed: on PostgreSQL a write still running then deadlocks with the TRUNCATE).

    First the sessions closing in the background (their room audio drains after the socket
    is gone), then every database thread of the runtime: a barrier task per thread, queued
    behind whatever is queued, completes only when no thread is still busy with older work.
    """
    import asyncio
    import threading

    from agents import consumers, pipeline
    from streams.runtime import runtime

    closing = [*pipeline._closing, *consumers._closing]
    if closing:
        await asyncio.wait(closing, timeout=timeout)
    loop = asyncio.get_running_loop()
    for executor in {runtime.executor, runtime.clock_executor}:
        workers = getattr(executor, "_max_workers", 1)
        barrier = threading.Barrier(workers)

        def wait(barrier: threading.Barrier = barrier) -> None:
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait(timeout)

        await asyncio.gather(*(loop.run_in_executor(executor, wait) for _ in range(workers)))


def audio_of(frames: list[dict[str, Any]]) -> bytes:
    return b"".join(
        base64.b64decode(f["audio"]) for f in frames if f["type"] == "agent.audio.chunk"
    )
