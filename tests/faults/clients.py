"""Clients for the fault tests: a speaker that retries like a careful producer, and a
spectator that resumes with `after=` whenever its socket ends."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import websockets

TENTH = b"\x01\x02" * 2400  # 0.1 s at 24 kHz mono 16-bit


def tenth(seq: int, tenths: int = 1) -> bytes:
    """`tenths` tenths of a second of PCM (24 kHz mono 16-bit) that differs per seq, so a lost or
    misplaced chunk shows in the audio."""
    return seq.to_bytes(2, "little") * 2400 * tenths


def chunk_body(
    stream_id: str, seq: int, room: str, *, data: bytes, done: bool = False, text: str = ""
) -> dict:
    return {
        "stream_id": stream_id,
        "seq": seq,
        "room": room,
        "speaker": f"speaker-{room}",
        "data": base64.b64encode(data).decode(),
        "done": done,
        "speech_text": text,
    }


def parse_ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@dataclass
class Answer:
    status: int
    body: dict
    retry_after: str | None
    elapsed_s: float


async def post(client: httpx.AsyncClient, url: str, body: dict) -> Answer | None:
    """One POST /audio; None when the connection itself failed (a dead worker)."""
    started = time.monotonic()
    try:
        response = await client.post(f"{url}/audio", json=body)
    except httpx.TransportError:
        return None
    try:
        payload = response.json()
    except ValueError:
        payload = {
            "_raw": response.text[:500],
            "_content_type": response.headers.get("content-type"),
        }
    return Answer(
        response.status_code,
        payload,
        response.headers.get("retry-after"),
        time.monotonic() - started,
    )


@dataclass
class Spectator:
    """Watches a room; on any end of its socket it reconnects with `after=<last id>`.

    That is what a well-behaved client does, so a server may either keep the socket and
    catch up by itself or close it and let the client resume: both must end complete.
    """

    base_url: str
    room: str
    messages: list[dict] = field(default_factory=list)
    reconnects: int = 0
    last_id: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)
    received_at: dict[int, float] = field(default_factory=dict)
    _task: asyncio.Task | None = None
    _connected: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._connected.wait(), 20)

    async def _run(self) -> None:
        first = True
        while not self.done.is_set():
            url = f"{self.base_url}/spectate/ws?room={self.room}"
            if not first:
                url += f"&after={self.last_id}"
            try:
                async with websockets.connect(url, open_timeout=5, max_size=None) as ws:
                    self._connected.set()
                    async for raw in ws:
                        self._take(json.loads(raw))
            except (OSError, TimeoutError, websockets.WebSocketException):
                await asyncio.sleep(0.2)
            if not self.done.is_set():
                self.reconnects += int(not first)
                first = False

    def _take(self, message: dict) -> None:
        if message.get("type") == "error":
            return
        self.messages.append(message)
        event_id = int(message.get("id", 0))
        self.last_id = max(self.last_id, event_id)
        self.received_at.setdefault(event_id, time.monotonic())

    async def stop(self) -> None:
        self.done.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m.get("type") == kind]

    def chunks(self, stream_id: str) -> list[dict]:
        """Distinct audio chunks of a stream, in the order they came."""
        seen: dict[int, dict] = {}
        for message in self.of_type("audio_chunk"):
            if message.get("stream_id") == stream_id:
                seen.setdefault(message["id"], message)
        return list(seen.values())
