"""The /ws/agent message contract (seed 003): parse and validate what a client sends.

Pure Python (no Django). Field names are the seed's, to the letter: ``utteranceId``,
``sequence``, ``timestamp``, ``audio`` (base64). Every refusal is a :class:`ProtocolError`
with a ``code``, a ``detail`` a person can act on and the ``field`` at fault; the session
answers it with an ``error`` frame and goes on.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "CLIENT_TYPES",
    "INPUT_ENCODING",
    "AudioFormat",
    "Chunk",
    "ProtocolError",
    "SequenceWindow",
    "decode_audio",
    "parse_format",
    "parse_frame",
]

INPUT_ENCODING = "pcm_s16le"
RATE_RANGE = (8000, 48000)
CLIENT_TYPES = (
    "user.audio.start",
    "user.audio.chunk",
    "user.audio.end",
    "agent.interrupt",
    "session.update",
    "text.input",
)
MAX_ID_CHARS = 128
MAX_TEXT_CHARS = 4000
MAX_INSTRUCTIONS_CHARS = 8000


class ProtocolError(Exception):
    """A client frame refused: ``code`` (machine), ``detail`` (person), ``field`` (where)."""

    def __init__(self, code: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field

    def frame(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": "error", "code": self.code, "detail": self.detail}
        if self.field:
            body["field"] = self.field
        return body


@dataclass(frozen=True)
class AudioFormat:
    """PCM16LE at ``sample_rate_hz`` with ``channels`` interleaved channels."""

    encoding: str = INPUT_ENCODING
    sample_rate_hz: int = 16000
    channels: int = 1

    @property
    def frame_bytes(self) -> int:
        return 2 * self.channels

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate_hz * self.frame_bytes

    def as_dict(self) -> dict[str, Any]:
        return {
            "encoding": self.encoding,
            "sample_rate_hz": self.sample_rate_hz,
            "channels": self.channels,
        }


@dataclass(frozen=True)
class Chunk:
    utterance_id: str
    sequence: int | None
    timestamp: float | None
    audio: bytes


def _int(value: Any, field: str, low: int, high: int) -> int:
    # JSON numbers like 16000.0 are integers too; bools are not.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(
            f"invalid_{field.rsplit('.', 1)[-1]}", f"{field} must be an integer.", field
        )
    if isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ProtocolError(
                f"invalid_{field.rsplit('.', 1)[-1]}", f"{field} must be an integer.", field
            )
        value = int(value)
    if not low <= value <= high:
        raise ProtocolError(
            f"invalid_{field.rsplit('.', 1)[-1]}",
            f"{field} must be between {low} and {high}, got {value}.",
            field,
        )
    return value


def check_text(value: Any, field: str, *, limit: int, empty: bool = True) -> str:
    """A string a database can store: at most ``limit`` characters, no NUL (PostgreSQL text
    refuses it), no lone surrogate (JSON's ``"\\ud800"`` is not UTF-8); ``empty=False``
    also refuses a blank one. Raises ProtocolError ``invalid_<field>``."""
    code = f"invalid_{field.rsplit('.', 1)[-1]}"
    if not isinstance(value, str):
        raise ProtocolError(code, f"{field} must be a string.", field)
    if not empty and not value.strip():
        raise ProtocolError(code, f"{field} must not be empty.", field)
    if len(value) > limit:
        raise ProtocolError(code, f"{field} must be at most {limit} characters.", field)
    if "\x00" in value:
        raise ProtocolError(code, f"{field} must not contain NUL characters.", field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError(
            code, f"{field} must be valid Unicode text (it has a lone surrogate).", field
        ) from None
    return value


def _str(body: dict[str, Any], field: str, *, required: bool, limit: int) -> str | None:
    value = body.get(field)
    if value is None:
        if required:
            raise ProtocolError("missing_field", f"{field} is required.", field)
        return None
    return check_text(value, field, limit=limit)


def utterance_id(body: dict[str, Any], *, required: bool = True) -> str | None:
    value = _str(body, "utteranceId", required=required, limit=MAX_ID_CHARS)
    if value is not None and not value.strip():
        raise ProtocolError("invalid_utteranceId", "utteranceId must not be empty.", "utteranceId")
    return value


def parse_format(value: Any, field: str = "format") -> AudioFormat:
    """``{encoding: "pcm_s16le", sample_rate_hz: 8000-48000, channels: 1|2}``, all optional."""
    if value is None:
        return AudioFormat()
    if not isinstance(value, dict):
        raise ProtocolError("invalid_format", f"{field} must be an object.", field)
    unknown = set(value) - {"encoding", "sample_rate_hz", "channels"}
    if unknown:
        name = sorted(unknown)[0]
        raise ProtocolError(
            "unsupported_format", f"{field}.{name} is not a format field.", f"{field}.{name}"
        )
    encoding = value.get("encoding", INPUT_ENCODING)
    if encoding != INPUT_ENCODING:
        raise ProtocolError(
            "unsupported_format",
            f"{field}.encoding must be {INPUT_ENCODING!r} (16-bit little-endian PCM), "
            f"got {encoding!r}.",
            f"{field}.encoding",
        )
    low, high = RATE_RANGE
    rate = value.get("sample_rate_hz", 16000)
    try:
        rate = _int(rate, f"{field}.sample_rate_hz", low, high)
    except ProtocolError as error:
        raise ProtocolError("unsupported_format", error.detail, error.field) from None
    channels = value.get("channels", 1)
    try:
        channels = _int(channels, f"{field}.channels", 1, 2)
    except ProtocolError as error:
        raise ProtocolError("unsupported_format", error.detail, error.field) from None
    return AudioFormat(INPUT_ENCODING, rate, channels)


def decode_audio(value: Any, fmt: AudioFormat, field: str = "audio") -> bytes:
    """Base64 audio of ``fmt``: a whole number of frames (2 bytes per sample and channel)."""
    if not isinstance(value, str):
        raise ProtocolError("invalid_audio", f"{field} must be a base64 string.", field)
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("invalid_audio", f"{field} is not valid base64.", field) from None
    check_frames(data, fmt, field)
    return data


def check_frames(data: bytes, fmt: AudioFormat, field: str = "audio") -> None:
    if len(data) % fmt.frame_bytes:
        raise ProtocolError(
            "partial_frame",
            f"{field} must be a whole number of frames ({fmt.frame_bytes} bytes each for "
            f"{fmt.channels}-channel 16-bit PCM), got {len(data)} bytes.",
            field,
        )


def parse_frame(raw: str) -> tuple[str, dict[str, Any]]:
    """A text frame's ``(type, body)``; raises ProtocolError for bad JSON or an unknown type."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ProtocolError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ProtocolError("invalid_json", "A frame must be a JSON object with a type.")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("missing_field", "type is required (a string).", "type")
    if kind not in CLIENT_TYPES:
        raise ProtocolError(
            "unknown_type",
            f"Unknown type {kind[:64]!r}; expected one of: {', '.join(CLIENT_TYPES)}.",
            "type",
        )
    return kind, body


def parse_chunk(body: dict[str, Any], fmt: AudioFormat) -> Chunk:
    uid = utterance_id(body, required=False) or ""
    sequence = body.get("sequence")
    if sequence is not None:
        sequence = _int(sequence, "sequence", 0, 2**31 - 1)
    timestamp = body.get("timestamp")
    if timestamp is not None and (
        isinstance(timestamp, bool)
        or not isinstance(timestamp, int | float)
        or not math.isfinite(timestamp)
    ):
        raise ProtocolError("invalid_timestamp", "timestamp must be a finite number.", "timestamp")
    if "audio" not in body:
        raise ProtocolError("missing_field", "audio is required (base64 PCM).", "audio")
    return Chunk(uid, sequence, timestamp, decode_audio(body["audio"], fmt))


class SequenceWindow:
    """Puts an utterance's chunks back in ``sequence`` order within a small window.

    ``push(sequence, data)`` returns ``(ready, gap)``: the chunks now in order (possibly none,
    possibly several) and, when the client skipped ahead, ``(first, last, count)`` of the
    sequences given up on. A duplicate (already delivered or already waiting) returns nothing
    and counts in ``duplicates``. A chunk more than ``window`` ahead of the next expected one
    means the missing ones are lost: they are skipped (reported as the gap) and the stream
    goes on from the chunks that did arrive. Memory is bounded by ``window`` chunks.
    """

    def __init__(self, window: int = 8, first: int | None = 0) -> None:
        self.window = window
        self.expected = first
        self.pending: dict[int, bytes] = {}
        self.duplicates = 0

    def push(
        self, sequence: int | None, data: bytes
    ) -> tuple[list[bytes], tuple[int, int, int] | None]:
        if sequence is None:  # binary frames and chunks without a number: next in order
            if self.expected is not None:
                self.expected += 1
            return [data], None
        if self.expected is None:
            self.expected = sequence
        if sequence < self.expected or sequence in self.pending:
            self.duplicates += 1
            return [], None
        gap = None
        ready: list[bytes] = []
        if sequence >= self.expected + self.window:
            # The missing chunks are not coming: play what waits, then go on from here.
            missing = [n for n in range(self.expected, sequence) if n not in self.pending]
            ready = self.skip_gap()
            self.expected = max(self.expected, sequence)
            gap = (missing[0], missing[-1], len(missing))
        self.pending[sequence] = data
        while self.expected in self.pending:
            ready.append(self.pending.pop(self.expected))
            self.expected += 1
        return ready, gap

    def skip_gap(self) -> list[bytes]:
        """Give up on the missing chunk(s): what waits behind the gap, in order."""
        ready: list[bytes] = []
        while self.pending:
            self.expected = min(self.pending)
            while self.expected in self.pending:
                ready.append(self.pending.pop(self.expected))
                self.expected += 1
        return ready
