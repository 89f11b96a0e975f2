"""A terminal spectator: read a room's events from a running Parley, print them, keep the audio.

The client side of `GET /spectate/ws` (docs/api.md), used by `manage.py listen`. No Django
import: it talks to a server over the network like any other client, with the `websockets`
package the server's requirements already install.
"""

from __future__ import annotations

import asyncio
import base64
import errno
import json
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets

# (sample_rate_hz, channels, bytes_per_sample): what one WAV file can hold.
WavFormat = tuple[int, int, int]


def spectator_url(base_url: str, room: str, after: int | None = None) -> str:
    """The spectator socket of the server at `base_url` (http(s):// or ws(s)://, path
    ignored): `ws://host:port/spectate/ws?room=<room>[&after=<id>]`. ValueError for another
    scheme."""
    parts = urlsplit(base_url)
    schemes = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"--url must be http(s)://host[:port], got {base_url!r}")
    query = {"room": room} | ({} if after is None else {"after": str(after)})
    return urlunsplit((schemes[parts.scheme], parts.netloc, "/spectate/ws", urlencode(query), ""))


def describe(event: dict[str, Any]) -> tuple[str, str]:
    """(speaker, text) of an event for one printed line: the speech, the input's name, the
    turn's status, the chunk's place in its stream, the floor holder of a state."""
    kind = event.get("type")
    speaker = event.get("speaker") or "-"
    if kind == "audio_chunk":
        size = len(base64.b64decode(event.get("data", "")))
        text = (
            f"{event.get('stream_id')} #{event.get('seq')} at {event.get('offset_ms')} ms, "
            f"{size} bytes"
        )
    elif kind == "speech":
        cut = f" (cut at {event.get('heard_ms')} ms)" if event.get("interrupted") else ""
        text = f"{event.get('text', '')!r}{cut}"
    elif kind == "input":
        text = f"{event.get('name')} {event.get('stream_id') or ''}".strip()
    elif kind == "playback_done":
        text = f"{event.get('stream_id')} {event.get('duration_ms')} ms"
    elif kind == "turn":
        text = f"{event.get('status')} ({event.get('reason')})"
    elif kind == "state":
        turn = event.get("turn") or {}
        holder = turn.get("speaker")
        text = f"floor held by {holder}" if holder else "floor free"
        text += f", {event.get('spectators', 0)} spectator(s)"
    elif kind == "error":
        text = f"{event.get('error')}: {event.get('detail', '')}"
    else:
        text = json.dumps({k: v for k, v in event.items() if k not in ("type", "id", "room")})
    return speaker, text


def event_line(event: dict[str, Any]) -> str:
    """`<id> <HH:MM:SS.mmm> <type> <speaker> <text>`: one line per event, times in UTC."""
    ts = str(event.get("ts") or "")
    clock = ts[11:23] if len(ts) >= 23 else ts or "-"
    speaker, text = describe(event)
    return (
        f"{event.get('id', '-'):>6} {clock:<12} {event.get('type', '?'):<13} {speaker:<12} {text}"
    )


@dataclass
class AudioSink:
    """The audio heard, in the order heard, written as it arrives (a stopped listener leaves
    a valid file). Streams of the first format go to `path`; a stream in another format
    (rate, channels, sample width) starts `<stem>.2.wav`, `<stem>.3.wav`, …"""

    path: Path
    files: dict[WavFormat, tuple[Path, wave.Wave_write]] = field(default_factory=dict)
    bytes_by_file: dict[Path, int] = field(default_factory=dict)
    streams: list[str] = field(default_factory=list)

    def check_writable(self) -> None:
        """Prove `path` can be written before anything is heard, leaving it as it was: an
        existing file is opened for appending (nothing written), a new one is created and
        removed (a listener that hears no audio leaves no file). Raises OSError (e.g.
        IsADirectoryError, FileNotFoundError for a missing directory, PermissionError)."""
        if self.path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(self.path))
        if self.path.exists():
            self.path.open("ab").close()
        else:
            self.path.open("xb").close()
            self.path.unlink()

    def write(self, event: dict[str, Any]) -> None:
        """Append one `audio_chunk` event's PCM (base64 `data`) to its format's file."""
        fmt: WavFormat = (
            int(event.get("sample_rate_hz", 24000)),
            int(event.get("channels", 1)),
            int(event.get("bytes_per_sample", 2)),
        )
        if fmt not in self.files:
            path = (
                self.path
                if not self.files
                else self.path.with_name(f"{self.path.stem}.{len(self.files) + 1}.wav")
            )
            writer = wave.open(str(path), "wb")  # noqa: SIM115 - closed in close()
            writer.setframerate(fmt[0])
            writer.setnchannels(fmt[1])
            writer.setsampwidth(fmt[2])
            self.files[fmt] = (path, writer)
            self.bytes_by_file[path] = 0
        path, writer = self.files[fmt]
        pcm = base64.b64decode(event.get("data", ""))
        writer.writeframes(pcm)
        self.bytes_by_file[path] += len(pcm)
        stream_id = str(event.get("stream_id"))
        if stream_id not in self.streams:
            self.streams.append(stream_id)

    def close(self) -> None:
        for _, writer in self.files.values():
            writer.close()  # writes the final sizes into the header


@dataclass
class Listener:
    """One spectator connection's progress: what it printed, where to resume, what it kept."""

    room: str
    sink: AudioSink | None
    events: int = 0
    last_id: int | None = None
    closed_by_server: str = ""
    close_code: int | None = None

    async def run(
        self,
        url: str,
        *,
        emit: Callable[[str], None],
        count: int | None = None,
        until_idle: float | None = None,
        seconds: float | None = None,
    ) -> None:
        """Print every message of the socket at `url` through `emit` and keep its audio,
        until `count` events, `until_idle` seconds without a message, `seconds` in all, the
        server closing, or cancellation (Ctrl-C). OSError / websockets' InvalidHandshake
        when the server cannot be reached."""
        deadline = None if seconds is None else time.monotonic() + seconds
        try:
            async with websockets.connect(url, max_size=None, open_timeout=10) as socket:
                while count is None or self.events < count:
                    timeout = until_idle
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            return
                        timeout = left if timeout is None else min(timeout, left)
                    try:
                        raw = await asyncio.wait_for(socket.recv(), timeout)
                    except TimeoutError:
                        return
                    except websockets.ConnectionClosed as exc:
                        frame = exc.rcvd
                        self.close_code = frame.code if frame else None
                        self.closed_by_server = (
                            f"{frame.code} {frame.reason}".strip() if frame else "no close frame"
                        )
                        return
                    self._take(json.loads(raw), emit)
        finally:
            if self.sink is not None:
                self.sink.close()

    def _take(self, event: dict[str, Any], emit: Callable[[str], None]) -> None:
        emit(event_line(event))
        if event.get("type") == "error":
            return  # not an event: its id is the last one sent
        self.events += 1
        self.last_id = event.get("id", self.last_id)
        if event.get("type") == "audio_chunk" and self.sink is not None:
            self.sink.write(event)

    def summary(self) -> str:
        """One line: events seen, where to resume, what was written where."""
        resume = (
            ""
            if self.last_id is None
            else f", last id {self.last_id} (resume with --after {self.last_id})"
        )
        line = f"{self.room}: {self.events} event(s){resume}"
        if self.closed_by_server:
            line += f"; the server closed the socket ({self.closed_by_server})"
        if self.sink is None or not self.sink.files:
            return line + "; no audio heard"
        for (rate, channels, width), (path, _) in self.sink.files.items():
            size = self.sink.bytes_by_file[path]
            secs = size / (rate * channels * width)
            line += f"; wrote {secs:.2f} s ({size} bytes, {rate} Hz, {channels} ch) to {path}"
        return line + f" from {len(self.sink.streams)} stream(s)"
