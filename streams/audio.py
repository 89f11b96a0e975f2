"""Pure audio math shared by every surface: PCM formats, durations, the playhead, WAV headers.

No Django import here on purpose: this is the part every other module trusts, so it must be
trivially testable on its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass

SAMPLE_RATE_RANGE = (8000, 48000)
CHANNEL_CHOICES = (1, 2)
BYTES_PER_SAMPLE_RANGE = (1, 4)
PLAYBACK_SPEED_RANGE = (0.25, 4.0)

# RIFF and data sizes of a WAV whose length is not known yet (a live stream).
UNKNOWN_WAV_SIZE = 0xFFFFFFFF
WAV_HEADER_BYTES = 44


class FormatError(ValueError):
    """A PCM format field is out of range; carries the field name for the API error."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


@dataclass(frozen=True, slots=True)
class PcmFormat:
    sample_rate_hz: int = 24000
    channels: int = 1
    bytes_per_sample: int = 2
    playback_speed: float = 1.0

    def validate(self) -> PcmFormat:
        low, high = SAMPLE_RATE_RANGE
        if not low <= self.sample_rate_hz <= high:
            raise FormatError(
                "sample_rate_hz",
                f"sample_rate_hz must be between {low} and {high}, got {self.sample_rate_hz}.",
            )
        if self.channels not in CHANNEL_CHOICES:
            raise FormatError("channels", f"channels must be 1 or 2, got {self.channels}.")
        low, high = BYTES_PER_SAMPLE_RANGE
        if not low <= self.bytes_per_sample <= high:
            raise FormatError(
                "bytes_per_sample",
                f"bytes_per_sample must be between {low} and {high}, got {self.bytes_per_sample}.",
            )
        low_speed, high_speed = PLAYBACK_SPEED_RANGE
        if not low_speed <= self.playback_speed <= high_speed:
            raise FormatError(
                "playback_speed",
                f"playback_speed must be between {low_speed} and {high_speed}, "
                f"got {self.playback_speed}.",
            )
        return self

    @property
    def frame_bytes(self) -> int:
        """Bytes of one sample across all channels: chunk sizes must be a multiple of this."""
        return self.channels * self.bytes_per_sample

    @property
    def bytes_per_second(self) -> int:
        return self.sample_rate_hz * self.frame_bytes

    def duration_s(self, total_bytes: int) -> float:
        """How long `total_bytes` take to play, honouring playback speed (DESIGN invariant 3)."""
        return total_bytes / self.bytes_per_second / self.playback_speed

    def bytes_for(self, seconds: float) -> int:
        """Whole frames that play in `seconds`, the inverse of duration_s."""
        frames = int(seconds * self.playback_speed * self.sample_rate_hz)
        return frames * self.frame_bytes


def advance_playhead(
    playhead: float | None, arrival: float, duration: float
) -> tuple[float, float]:
    """Playhead model (DESIGN invariant 4): a chunk starts at max(playhead, arrival).

    Returns (start, new_playhead). A producer faster than real time queues chunks back to
    back; a slow one underruns and the silence is accounted for by starting at arrival.
    """
    start = arrival if playhead is None else max(playhead, arrival)
    return start, start + duration


def heard_seconds(spans: Iterable[tuple[float, float]], now: float) -> float:
    """Audio played by `now`, given each chunk's (start, duration) on the playhead."""
    heard = 0.0
    for start, duration in spans:
        if now <= start:
            continue
        heard += min(now - start, duration)
    return heard


def wav_header(fmt: PcmFormat, data_bytes: int | None) -> bytes:
    """A 44-byte PCM WAV header; `data_bytes=None` marks a live stream of unknown length."""
    if data_bytes is None:
        riff_size = data_size = UNKNOWN_WAV_SIZE
    else:
        data_size = data_bytes
        riff_size = min(36 + data_bytes, UNKNOWN_WAV_SIZE)
    bits = fmt.bytes_per_sample * 8
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVEfmt "
        + struct.pack(
            "<IHHIIHH",
            16,
            1,
            fmt.channels,
            fmt.sample_rate_hz,
            fmt.bytes_per_second,
            fmt.frame_bytes,
            bits,
        )
        + b"data"
        + struct.pack("<I", data_size)
    )
