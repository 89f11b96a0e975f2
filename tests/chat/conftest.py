"""Helpers for the chat and say tests: the ASGI app in this loop, piece by piece."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import imageio_ffmpeg
import pytest
from channels.db import database_sync_to_async

from config.asgi import application
from streams.auth import api_key_create

# The seed's two error bodies, to the letter.
NOT_FOUND = {"error": "Audio stream not found or expired", "code": "HTTP_404"}
UNAVAILABLE = {"error": "TTS service not available", "code": "HTTP_503"}
# A registry whose only engine cannot be built here: the "no engine available" case.
BROKEN_TTS = {"default": "piper", "engines": {"piper": {"model_path": "/nonexistent/x.onnx"}}}


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


@dataclass
class Exchange:
    """One HTTP exchange seen at the ASGI level: every body message as it was sent."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    pieces: list[bytes] = field(default_factory=list)
    times: list[float] = field(default_factory=list)

    @property
    def body(self) -> bytes:
        return b"".join(self.pieces)

    def json(self) -> Any:
        return json.loads(self.body)


async def asgi(
    method: str,
    path: str,
    body: Any = None,
    *,
    on_piece: Callable[[int, bytes], None] | None = None,
    disconnect_after: int | None = None,
    hang_up: asyncio.Event | None = None,
    headers: dict[str, str] | None = None,
) -> Exchange:
    """Call the ASGI app directly, so streamed pieces are seen one by one (httpx's
    ASGITransport buffers the whole body). The client hangs up after `disconnect_after`
    pieces, or when `hang_up` is set."""
    raw = json.dumps(body).encode() if body is not None and not isinstance(body, bytes) else body
    sent_request = False
    hang_up = hang_up or asyncio.Event()
    seen = Exchange()
    all_headers = {"host": "t", "content-type": "application/json", **(headers or {})}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in all_headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("t", 80),
    }

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": raw or b"", "more_body": False}
        await hang_up.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            seen.status = message["status"]
            seen.headers = {k.decode().lower(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body" and message.get("body"):
            if on_piece is not None:
                on_piece(len(seen.pieces), message["body"])
            seen.pieces.append(message["body"])
            seen.times.append(time.monotonic())
            if disconnect_after is not None and len(seen.pieces) >= disconnect_after:
                hang_up.set()

    await asyncio.wait_for(application(scope, receive, send), 30)
    return seen


def read_wav(data: bytes) -> tuple[int, int, float]:
    """(sample rate, channels, seconds) of a WAV, streamed (0xFFFFFFFF sizes) or not."""
    with wave.open(io.BytesIO(data)) as wav:
        frames = wav.readframes(10**9)
        rate, channels = wav.getframerate(), wav.getnchannels()
        return rate, channels, len(frames) / (rate * channels * wav.getsampwidth())


def decode(data: bytes, fmt: str) -> tuple[int, float]:
    """(sample rate, seconds) of encoded audio, decoded by ffmpeg."""
    demuxer = {"mp3": "mp3", "opus": "ogg", "aac": "aac", "flac": "flac"}[fmt]
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    result = subprocess.run(
        [ffmpeg, "-v", "error", "-f", demuxer, "-i", "pipe:0", "-f", "wav", "pipe:1"],
        input=data,
        capture_output=True,
        check=True,
    )
    rate, _, seconds = read_wav(result.stdout)
    return rate, seconds


@pytest.fixture
def require_key(settings):
    """PARLEY_REQUIRE_AUTH on; returns `headers(speaker)`: a new key's Authorization header."""
    settings.PARLEY_REQUIRE_AUTH = True

    async def headers(speaker: str) -> dict[str, str]:
        _, key = await database_sync_to_async(api_key_create)(speaker=speaker)
        return {"Authorization": f"Bearer {key}"}

    return headers


@pytest.fixture
def broken_tts(settings):
    settings.PARLEY_TTS_CONFIG = BROKEN_TTS
    return settings
