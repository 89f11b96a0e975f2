"""The one door from chat and say to speech synthesis (`speech.services.synthesis_stream`).

Every synthesis is therefore a SpeechJob (kind "chat", "stream" or "say"). `open_synthesis()`
pulls the first chunk before returning, so a bad voice (400) or a missing engine (503) is
answered before a streaming response or a room turn is committed to.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from speech.services import SpeechChunk, engine_for, get_registry, synthesis_stream
from speech.tts import TTSError
from streams.errors import ApiError

TTS_UNAVAILABLE = "TTS service not available"


class TTSUnavailable(Exception):
    """No engine can synthesize here (library, model or server missing)."""


@dataclass
class Synthesis:
    """A synthesis that has produced its first chunk (or finished without audio)."""

    sample_rate_hz: int
    engine: str
    voice: str
    _first: SpeechChunk | None
    _chunks: AsyncIterator[SpeechChunk]
    # (text offset, output byte offset) of each word the engine marked, as audio is yielded.
    words: list[tuple[int, int]] = field(default_factory=list)

    def note_sent(self, n_bytes: int) -> None:
        """Record bytes written to the client (SpeechJob bytes_sent and time to first byte)."""
        if self._first is not None:
            self._first.job.note_sent(n_bytes)

    async def pcm(self) -> AsyncIterator[bytes]:
        """PCM16 mono at `sample_rate_hz`, as the engine produces it; closing stops the engine."""
        async with contextlib.aclosing(self._chunks):
            if self._first is None:
                return
            self._note_words(self._first)
            yield self._first.pcm
            async for chunk in self._chunks:
                self._note_words(chunk)
                yield chunk.pcm

    def _note_words(self, chunk: SpeechChunk) -> None:
        self.words.extend((m.text_offset, m.audio_offset) for m in chunk.marks if m.kind == "word")

    async def counted(self, pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`pieces` unchanged, each recorded as sent to the client."""
        async for piece in pieces:
            self.note_sent(len(piece))
            yield piece

    async def aclose(self) -> None:
        await self._chunks.aclose()


async def open_synthesis(
    text: str,
    *,
    voice: str | None,
    kind: str,
    endpoint: str,
    speed: float = 1.0,
    sample_rate: int | None = None,
    response_format: str = "pcm",
    params: Mapping[str, Any] | None = None,
) -> Synthesis:
    """Start synthesizing `text`; raises TTSUnavailable or the ApiError of a bad voice/speed."""
    chunks = synthesis_stream(
        text=text,
        model=None,
        voice=voice,
        speed=speed,
        params=params,
        sample_rate=sample_rate,
        job_kind=kind,
        endpoint=endpoint,
        response_format=response_format,
    )
    try:
        first: SpeechChunk | None = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except ApiError as exc:
        if exc.code == "engine_unavailable":
            raise TTSUnavailable(exc.detail) from exc
        raise
    if first is not None:
        job = first.job
        return Synthesis(job.sample_rate, job.engine, job.engine_voice, first, chunks)
    # Nothing speakable: no audio, and the job is already over.
    rate = sample_rate or get_registry().engine().sample_rate
    return Synthesis(rate, get_registry().default_name, voice or "", None, chunks)


async def ensure_engine() -> None:
    """TTSUnavailable unless the default engine can run here (built once, off the loop)."""
    registry = get_registry()
    try:
        await engine_for(registry, registry.default_name)
    except TTSError as exc:
        raise TTSUnavailable(str(exc)) from exc
