"""The engine contract every text-to-speech backend implements.

An engine turns text into 16-bit little-endian mono PCM and hands it over *incrementally*, as
it is produced, so that a streaming response can start before the whole text is synthesized.
Engines are blocking (C libraries, ONNX, sync HTTP); :func:`astream` adapts any of them to
asyncio by running it in a worker thread, and prefers an engine's native ``asynthesize`` when
it has one.

No Django import here: the audio layer is plain Python and reused by every surface.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

__all__ = [
    "PCM_BYTES_PER_SAMPLE",
    "PCM_CHANNELS",
    "EngineCapabilities",
    "EngineUnavailable",
    "Mark",
    "SynthChunk",
    "SynthesisError",
    "TTSEngine",
    "TTSError",
    "UnsupportedFeature",
    "VoiceInfo",
    "VoiceNotFound",
    "VoiceSample",
    "astream",
]

PCM_CHANNELS = 1
PCM_BYTES_PER_SAMPLE = 2


class TTSError(Exception):
    """Base class of every error an engine raises on purpose."""


class EngineUnavailable(TTSError):
    """The engine cannot run here: a package, library, model file or server is missing."""


class VoiceNotFound(TTSError):
    """The requested voice does not exist for this engine."""

    def __init__(self, voice: str, engine: str = "") -> None:
        self.voice = voice
        self.engine = engine
        where = f" for engine {engine!r}" if engine else ""
        super().__init__(f"unknown voice {voice!r}{where}")


class SynthesisError(TTSError):
    """The engine accepted the request but failed while producing audio."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class UnsupportedFeature(TTSError):
    """The request asks for something this engine cannot do (e.g. voice cloning)."""


MarkKind = Literal["word", "sentence"]


class Mark(NamedTuple):
    """A position in the text tied to a position in the audio.

    ``text_offset`` is a 0-based character index into the text given to ``synthesize``;
    ``audio_offset`` is a byte offset into the concatenated PCM of that same call.
    """

    kind: MarkKind
    text_offset: int
    audio_offset: int


@dataclass(frozen=True, slots=True)
class SynthChunk:
    """One piece of PCM16LE mono audio, a whole number of samples long."""

    pcm: bytes
    marks: tuple[Mark, ...] = ()


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    id: str
    name: str
    language: str = ""
    gender: str | None = None  # "male" / "female" when the engine says so


@dataclass(frozen=True, slots=True)
class VoiceSample:
    """Reference audio for engines that clone a voice from a sample."""

    content: bytes
    filename: str = "voice.wav"
    content_type: str = "audio/wav"

    @classmethod
    def from_path(cls, path: str | Path, content_type: str = "audio/wav") -> VoiceSample:
        path = Path(path)
        return cls(content=path.read_bytes(), filename=path.name, content_type=content_type)


@dataclass(frozen=True, slots=True)
class EngineCapabilities:
    """What an engine can do, so the API layer can validate and document requests."""

    voice_cloning: bool = False
    word_marks: bool = False
    sentence_marks: bool = False
    # Request parameters that change the output (``speed`` included when it has an effect);
    # anything else passed in ``params`` is accepted and ignored...
    params: frozenset[str] = frozenset()
    # ...unless the engine forwards every param to a server that may know more of them.
    forwards_params: bool = False
    # Speeds the engine honours; a request outside is clamped to this range, not rejected.
    speed_range: tuple[float, float] = (1.0, 1.0)
    notes: str = ""


class TTSEngine(abc.ABC):
    """A text-to-speech backend producing PCM16LE mono at ``sample_rate`` Hz."""

    name: str = "engine"
    sample_rate: int = 22050
    channels: int = PCM_CHANNELS
    bytes_per_sample: int = PCM_BYTES_PER_SAMPLE
    capabilities: EngineCapabilities = EngineCapabilities()

    @abc.abstractmethod
    def voices(self) -> list[VoiceInfo]:
        """Voices accepted by ``synthesize(voice=...)``."""

    @property
    def default_voice(self) -> str | None:
        return None

    @abc.abstractmethod
    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        params: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        voice_sample: VoiceSample | None = None,
    ) -> Iterator[SynthChunk]:
        """Yield audio as the engine produces it; stop within one chunk once ``cancel`` is set.

        ``cancel`` belongs to the caller: engines read it and never set it (``astream`` uses
        it to tell a finished stream from a cancelled one). Closing the returned generator
        must stop the engine too.

        Implementations validate cheap things (voice, cloning support) before the first chunk
        and raise :class:`VoiceNotFound` / :class:`UnsupportedFeature` from the first
        ``next()`` at the latest.
        """

    def check_request(
        self,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        voice_sample: VoiceSample | None = None,
    ) -> None:
        """Raise the error ``synthesize`` would raise for these arguments, without synthesizing.

        Lets an HTTP view answer 4xx before it commits to a streaming response.
        """
        self.check_sample_and_speed(speed=speed, voice_sample=voice_sample)
        if voice is not None and voice not in {v.id for v in self.voices()}:
            raise VoiceNotFound(voice, self.name)

    def check_sample_and_speed(self, *, speed: float, voice_sample: VoiceSample | None) -> None:
        """The checks every engine shares; engines with their own voice rules add theirs."""
        if voice_sample is not None and not self.capabilities.voice_cloning:
            raise UnsupportedFeature(f"{self.name} cannot clone a voice from a sample")
        if not (speed > 0):
            raise ValueError("speed must be positive")

    def clamp_speed(self, speed: float) -> float:
        low, high = self.capabilities.speed_range
        return min(max(speed, low), high)

    def close(self) -> None:  # noqa: B027 - optional hook, most engines hold nothing
        """Release resources (connections, sessions). Engines stay usable only if reopened."""

    def bytes_to_seconds(self, n_bytes: int) -> float:
        return n_bytes / (self.sample_rate * self.channels * self.bytes_per_sample)


class _Finished:
    pass


_FINISHED = _Finished()


@dataclass(slots=True)
class _Failed:
    error: BaseException


@dataclass(slots=True)
class _StreamState:
    cancel: threading.Event = field(default_factory=threading.Event)
    # Bounds how far the producer thread may run ahead of a slow consumer.
    room: threading.Semaphore = field(default_factory=lambda: threading.Semaphore(64))


async def astream(
    engine: TTSEngine,
    text: str,
    *,
    voice: str | None = None,
    speed: float = 1.0,
    params: Mapping[str, Any] | None = None,
    voice_sample: VoiceSample | None = None,
    max_pending_chunks: int = 64,
    cancel: threading.Event | None = None,
) -> AsyncIterator[SynthChunk]:
    """Stream ``engine``'s chunks into asyncio as they are produced.

    The engine runs in its own daemon thread (not the loop's default executor, which a few
    long streams would exhaust). When the consumer stops early, by ``aclose()``, ``break``
    or task cancellation, the engine's cancel event is set so it stops within one chunk.
    Use ``contextlib.aclosing`` to make that happen immediately rather than at garbage
    collection.
    """
    native = getattr(engine, "asynthesize", None)
    if native is not None:
        chunks = native(text, voice=voice, speed=speed, params=params, voice_sample=voice_sample)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                if cancel is not None and cancel.is_set():
                    return
                yield chunk
        return

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[SynthChunk | _Finished | _Failed] = asyncio.Queue()
    state = _StreamState(
        cancel=cancel if cancel is not None else threading.Event(),
        room=threading.Semaphore(max_pending_chunks),
    )

    def deliver(item: SynthChunk | _Finished | _Failed) -> bool:
        try:
            loop.call_soon_threadsafe(queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            state.cancel.set()
            return False
        return True

    def produce() -> None:
        chunks = None
        outcome: _Finished | _Failed = _FINISHED
        try:
            chunks = engine.synthesize(
                text,
                voice=voice,
                speed=speed,
                params=params,
                cancel=state.cancel,
                voice_sample=voice_sample,
            )
            for chunk in chunks:
                while not state.room.acquire(timeout=0.05):
                    if state.cancel.is_set():
                        return
                if state.cancel.is_set() or not deliver(chunk):
                    return
        except BaseException as error:
            outcome = _Failed(error)
        finally:
            # Closing the generator runs the engine's own cleanup in this thread.
            close = getattr(chunks, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            # Always tell the consumer: after an external cancel it is still waiting.
            deliver(outcome)

    worker = threading.Thread(target=produce, name=f"tts-{engine.name}", daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _Finished) or state.cancel.is_set():
                return
            if isinstance(item, _Failed):
                raise item.error
            state.room.release()
            yield item
    finally:
        state.cancel.set()
