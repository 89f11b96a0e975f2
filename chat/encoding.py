"""What POST /audio/stream and GET /audio/stream/{id} send: quality levels and fixed pieces.

The encoders are the speech app's (`speech.encoding`: a live WAV header, or one ffmpeg
process fed and read at once); resampling happens in `synthesis_stream(sample_rate=...)`.
A quality level picks the output rate, the resampler and the codec's bitrate or compression.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from speech.encoding import (
    CONTENT_TYPES,
    bitrate_kbps,
    encode,
    output_rate,
    spawn,
    stop,
    streamed_wav_header,
)


@dataclass(frozen=True)
class Quality:
    sample_rate_hz: int
    # speech's streaming_quality: soxr LQ/HQ/VHQ resampling; mp3/aac 64/128/192k,
    # opus 32/64/128k (each capped at what the codec does at the rate), flac level 0/5/8.
    level: str


# low: wideband speech, small; medium: the engines' own 22.05 kHz (the seed's format);
# high: 24 kHz with the steepest resampling filter and the highest bitrates.
QUALITIES: dict[str, Quality] = {
    "low": Quality(16000, "fast"),
    "medium": Quality(22050, "balanced"),
    "high": Quality(24000, "high"),
}
FORMATS: tuple[str, ...] = ("wav", "pcm", "mp3", "opus", "aac", "flac")


@dataclass(frozen=True)
class Encoding:
    """What one response contains: format, quality, output rate and (lossy) bitrate."""

    format: str
    quality: str
    sample_rate_hz: int

    @property
    def level(self) -> str:
        return QUALITIES[self.quality].level

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES[self.format]

    @property
    def bitrate(self) -> str | None:
        """What the encoder is asked for (capped at what it can do at this rate)."""
        kbps = bitrate_kbps(self.format, self.sample_rate_hz, self.level)
        return f"{kbps}k" if kbps is not None else None

    def headers(self) -> dict[str, str]:
        headers = {
            "X-Audio-Format": self.format,
            "X-Audio-Quality": self.quality,
            "X-Sample-Rate": str(self.sample_rate_hz),
            "X-Channels": "1",
            "X-Bits-Per-Sample": "16",
        }
        if self.bitrate:
            headers["X-Bitrate"] = self.bitrate
        return headers


def encoding_for(fmt: str, quality: str) -> Encoding:
    rate = output_rate(fmt, QUALITIES[quality].sample_rate_hz)
    assert rate is not None
    return Encoding(fmt, quality, rate)


async def _with_wav_header(pcm: AsyncIterator[bytes], sample_rate: int) -> AsyncIterator[bytes]:
    yield streamed_wav_header(sample_rate)
    async for chunk in pcm:
        yield chunk


async def _compressed(pcm: AsyncIterator[bytes], encoding: Encoding) -> AsyncIterator[bytes]:
    process = await spawn(encoding.format, encoding.sample_rate_hz, encoding.level)
    try:
        async with contextlib.aclosing(encode(pcm, process, encoding.format)) as body:
            async for data in body:
                yield data
    finally:
        await stop(process)


def encoded(pcm: AsyncIterator[bytes], encoding: Encoding) -> AsyncIterator[bytes]:
    """PCM at the encoding's rate as the response body of `encoding` (not yet in pieces)."""
    if encoding.format == "wav":
        return _with_wav_header(pcm, encoding.sample_rate_hz)
    if encoding.format == "pcm":
        return pcm
    return _compressed(pcm, encoding)


async def fixed_pieces(data: AsyncIterator[bytes], size: int) -> AsyncIterator[bytes]:
    """Exactly `size` bytes a piece, the last one shorter; nothing held back longer than that."""
    buffer = bytearray()
    async for chunk in data:
        buffer += chunk
        while len(buffer) >= size:
            yield bytes(buffer[:size])
            del buffer[:size]
    if buffer:
        yield bytes(buffer)
