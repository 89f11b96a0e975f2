"""Clients and audio for the recording tests: the real Socket.IO client, a plain WebSocket
client, PCM and browser-style encoded audio made with ffmpeg. No Django import here: the
integration tests and bench/recordings.py use it too."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import math
import os
import struct
import subprocess
import sys
import wave
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import socketio
import websockets

from tests.support.servers import PARLEY_SERVER, PROJECT_ROOT, DaphneProcess

NAMESPACE = "/streaming"
RATE = 16000
TENTH_BYTES = RATE * 2 // 10  # 100 ms of 16 kHz mono 16-bit


def pcm(seconds: float, *, rate: int = RATE, channels: int = 1, start: int = 0) -> bytes:
    """A deterministic 16-bit ramp (content only matters for equality checks)."""
    count = int(seconds * rate) * channels
    return struct.pack(f"<{count}h", *(((start + i) * 37) % 30000 - 15000 for i in range(count)))


def encoded_audio(container: str, seconds: float) -> bytes:
    """A sine tone encoded the way a client would send it, made by the shipped ffmpeg."""
    import imageio_ffmpeg

    codec = {
        "webm": ["-c:a", "libopus", "-b:a", "32k", "-f", "webm"],
        "ogg": ["-c:a", "libopus", "-b:a", "32k", "-f", "ogg"],
        "mp3": ["-c:a", "libmp3lame", "-b:a", "64k", "-f", "mp3"],
        "wav": ["-c:a", "pcm_s16le", "-f", "wav"],
    }[container]
    command = [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-loglevel", "error"]
    command += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}"]
    command += ["-ac", "1", *codec, "pipe:1"]
    return subprocess.run(command, capture_output=True, check=True).stdout


def split(data: bytes, size: int) -> list[bytes]:
    """Cut encoded audio at arbitrary byte offsets, as MediaRecorder timeslices do."""
    return [data[i : i + size] for i in range(0, len(data), size)]


def wav_info(data: bytes) -> tuple[int, int, int, bytes]:
    """(rate, channels, width, frames) of a WAV, checking its sizes are the real ones."""
    riff_size, data_size = struct.unpack("<I", data[4:8])[0], struct.unpack("<I", data[40:44])[0]
    assert riff_size == len(data) - 8 and data_size == len(data) - 44
    with wave.open(io.BytesIO(data)) as reader:
        frames = reader.readframes(reader.getnframes())
        return reader.getframerate(), reader.getnchannels(), reader.getsampwidth(), frames


class SioSession:
    """The seed's client: python-socketio's AsyncClient on /streaming, events queued."""

    def __init__(self) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.connect_error: Any = None

        @self.client.on("*", namespace=NAMESPACE)
        async def any_event(event: str, data: Any = None) -> None:
            await self.events.put((event, data))

        @self.client.on("connect_error", namespace=NAMESPACE)
        async def refused(data: Any = None) -> None:
            self.connect_error = data

    async def connect(
        self,
        base_url: str,
        *,
        auth: Mapping[str, Any] | None = None,
        query: str = "",
        transports: tuple[str, ...] = ("websocket",),
    ) -> dict[str, Any]:
        url = f"{base_url}?{query}" if query else base_url
        await self.client.connect(
            url, namespaces=[NAMESPACE], auth=dict(auth) if auth else None, transports=transports
        )
        event, data = await self.next()
        assert event == "response", (event, data)
        return data

    async def next(self, timeout: float = 10.0) -> tuple[str, Any]:
        return await asyncio.wait_for(self.events.get(), timeout)

    async def emit(self, event: str, data: Any = None) -> None:
        await self.client.emit(event, data, namespace=NAMESPACE)

    async def chunk(self, data: Any) -> tuple[str, Any]:
        await self.emit("audio_chunk", {"chunk": data})
        return await self.next()

    async def stop(self) -> tuple[str, Any]:
        await self.emit("stop_recording")
        return await self.next()

    async def close(self) -> None:
        if self.client.transport() == "polling":
            # The client would wait for its pending long-poll GET (up to the 25 s ping).
            await self.client.eio.disconnect(abort=True)
            return
        await self.client.disconnect()


class WsSession:
    """A client of the plain WebSocket /ws/streaming (the `websockets` package)."""

    def __init__(self, connection: Any) -> None:
        self.ws = connection

    @classmethod
    async def open(cls, ws_base: str, query: str = "") -> tuple[WsSession, dict[str, Any]]:
        connection = await websockets.connect(f"{ws_base}/ws/streaming?{query}", max_size=None)
        session = cls(connection)
        event, data = await session.next()
        assert event == "response", (event, data)
        return session, data

    async def next(self, timeout: float = 10.0) -> tuple[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        return message["event"], message["data"]

    async def chunk(self, data: bytes) -> tuple[str, Any]:
        await self.ws.send(data)
        return await self.next()

    async def send_event(self, event: str, data: Any = None) -> tuple[str, Any]:
        await self.ws.send(json.dumps({"event": event, "data": data}))
        return await self.next()

    async def close(self) -> None:
        await self.ws.close()


CHUNKS_SQL = (
    "SELECT c.seq, c.data FROM streams_chunk c JOIN streams_stream s ON s.id = c.stream_id "
    "WHERE s.stream_id = {} ORDER BY c.seq"
)


async def record_then_kill(
    doomed: DaphneProcess, acked_chunks: int
) -> tuple[SioSession, dict, list]:
    """Record on `doomed`, put a few more chunks in flight, SIGKILL it mid-recording.

    Returns the client, its connect payload, and the chunks the server acknowledged.
    """
    client = SioSession()
    hello = await client.connect(doomed.url)
    acked = []
    for n in range(acked_chunks):
        piece = pcm(0.1, start=n * 1600)
        if (await client.chunk(piece))[0] == "response":
            acked.append(piece)
    for n in range(5):  # in flight, never acknowledged
        await client.emit("audio_chunk", {"chunk": pcm(0.1, start=n)})
    doomed.kill()
    await asyncio.sleep(0.2)
    return client, hello, acked


async def check_kept(
    rows: list[tuple[int, Any]], acked: list[bytes], survivor: DaphneProcess, hello: dict
) -> None:
    """Every acknowledged chunk is stored, in order, and another process saves them all."""
    assert [bytes(data) for _, data in rows[: len(acked)]] == acked
    assert [seq for seq, _ in rows] == list(range(len(rows)))
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{survivor.url}/streaming/force_stop",
            headers={"X-Streaming-Key": hello["streaming_key"]},
        )
        assert response.status_code == 200
        sid = hello["streaming_id"]
        body = (await http.get(f"{survivor.url}/static/audio/{sid}.wav")).content
    assert wav_info(body)[3].startswith(b"".join(acked))


def embedded_env(var_dir: Path, **extra: str) -> dict[str, str | None]:
    """The embedded default (SQLite under var_dir, in-memory layers), whatever the caller's env."""
    return {
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(var_dir),
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        **extra,
    }


def migrate(env: Mapping[str, str | None]) -> None:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env=merged,
        check=True,
    )


def start_embedded(var_dir: Path, count: int = 1) -> list[DaphneProcess]:
    """`count` Parley servers (`python -m config.server`, as bin/serve runs them) serving
    one migrated embedded-default Parley (one SQLite file), started side by side: each
    takes seconds to import Django."""
    env = embedded_env(var_dir)
    migrate(env)
    with ThreadPoolExecutor(count) as pool:
        starts = [
            pool.submit(DaphneProcess, env=env, name="daphne-recordings", server=PARLEY_SERVER)
            for _ in range(count)
        ]
        return [start.result() for start in starts]


def close_enough(actual_s: float, expected_s: float, tolerance_s: float = 0.06) -> bool:
    return math.isclose(actual_s, expected_s, abs_tol=tolerance_s)


class Spectator:
    """A real spectator WebSocket (/spectate/ws) collecting every message in the background."""

    def __init__(self, connection: Any) -> None:
        self.ws = connection
        self.messages: list[dict[str, Any]] = []
        self.received_at: list[float] = []
        self._task = asyncio.get_running_loop().create_task(self._collect())

    @classmethod
    async def open(cls, ws_base: str, room: str) -> Spectator:
        connection = await websockets.connect(f"{ws_base}/spectate/ws?room={room}", max_size=None)
        spectator = cls(connection)
        await spectator.wait_for(lambda: any(m["type"] == "state" for m in spectator.messages))
        return spectator

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.ws:
                self.messages.append(json.loads(raw))
                self.received_at.append(loop.time())

    async def wait_for(self, condition: Any, timeout: float = 15.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
            await asyncio.sleep(0.02)

    def chunks(self, stream_id: str) -> list[dict[str, Any]]:
        return [
            m for m in self.messages if m["type"] == "audio_chunk" and m["stream_id"] == stream_id
        ]

    def seconds(self, stream_id: str) -> float:
        return sum(
            len(base64.b64decode(m["data"]))
            / (m["sample_rate_hz"] * m["channels"] * m["bytes_per_sample"])
            for m in self.chunks(stream_id)
        )

    async def heard(self, stream_id: str, seconds: float, timeout: float = 15.0) -> None:
        """Wait until `seconds` of the stream's audio (less a 40 ms frame or two) arrived."""
        await self.wait_for(lambda: self.seconds(stream_id) >= seconds - 0.045, timeout)

    async def close(self) -> None:
        await self.ws.close()
        await self._task


def check_live_chunks(chunks: list[dict[str, Any]], stream_id: str, speaker: str) -> bytes:
    """A decoded live stream as the room gets it: 48 kHz mono 16-bit, seq 0.. in order,
    offsets that add up, every core field. Returns the PCM."""
    assert chunks, "no audio_chunk"
    assert [c["seq"] for c in chunks] == list(range(len(chunks)))
    ids = [c["id"] for c in chunks]
    assert ids == sorted(set(ids))
    pcm_bytes = b""
    for c in chunks:
        assert (c["stream_id"], c["speaker"]) == (stream_id, speaker)
        assert (c["sample_rate_hz"], c["channels"], c["bytes_per_sample"]) == (48000, 1, 2)
        assert c["playback_speed"] == 1.0
        assert c["offset_ms"] == round(len(pcm_bytes) / 96)
        pcm_bytes += base64.b64decode(c["data"])
    return pcm_bytes
