"""Speech synthesis: the one path from text to streamed PCM, recorded as a SpeechJob.

Public API (stable; the chat and room surfaces call it)::

    async def synthesis_stream(
        *,
        text: str,
        model: str | None,                # "tts-1"/"tts-1-hd"/"gpt-4o-mini-tts", an engine name,
                                          # or None: the default engine (PARLEY_TTS_ENGINE)
        voice: str | None,                # OpenAI voice, engine voice id, stored Voice name, None
        speed: float = 1.0,               # 0.25-4.0 (clamped to the engine's range, recorded)
        params: Mapping[str, Any] | None = None,  # the seed's knobs: exaggeration, cfg_weight,
                                          # temperature, streaming_chunk_size/strategy/
                                          # buffer_size/quality, instructions (typed values)
        sample_rate: int | None = None,   # 8000-48000, resampled; None: the engine's rate
        job_kind: str = "speech",         # recorded on the SpeechJob ("chat", "say", ...)
        voice_sample: VoiceSample | None = None,  # reference audio for cloning engines
        endpoint: str = "",               # recorded: which URL asked
        response_format: str = "pcm",     # recorded only
        stream_format: str = "audio",     # recorded only
    ) -> AsyncIterator[SpeechChunk]

    SpeechChunk.pcm    bytes: PCM16LE mono at SpeechChunk.job.sample_rate Hz (never empty)
    SpeechChunk.job    LiveJob: .id (the SpeechJob pk), .sample_rate, .engine, .status, ...
    SpeechChunk.piece  0-based index of the text piece it belongs to
    SpeechChunk.marks  word/sentence marks (text offsets into ``text``, audio byte offsets
                       into the whole output)

    Bad input raises ``streams.errors.ApiError`` (with ``field``) from the first
    ``__anext__``, before any audio: pull the first chunk before committing to a response.
    A failure after audio began raises ``SynthesisFailed`` (an ApiError). Stopping early
    (``aclose()``, ``break`` + close, task cancellation on client disconnect) stops the engine
    within one chunk and records the job as ``cancelled``. Call ``job.note_sent(n)`` when you
    write bytes to a client to record bytes sent and the real time to first byte.

    get_registry() -> speech.tts.EngineRegistry   # built from Django settings, cached
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import functools
import importlib.util
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from channels.layers import get_channel_layer
from django.conf import settings
from django.utils import timezone

from speech.job_audio import JobAudio, open_job_audio
from speech.jobs import ALL_JOBS_GROUP, LIVE, job_group
from speech.library import default_voice_name, stored_voice_named
from speech.models import JobStatus, SpeechJob, Voice
from speech.params import (
    KNOB_DEFAULTS,
    Segment,
    in_segment,
    is_text,
    joined_text,
    parse_knobs,
    segment_offsets,
)
from speech.tts import (
    OPENAI_MODELS,
    OPENAI_VOICE_TO_ESPEAK,
    EngineRegistry,
    EngineUnavailable,
    Mark,
    ModelNotFound,
    SynthesisError,
    TTSEngine,
    TTSError,
    UnsupportedFeature,
    VoiceNotFound,
    VoiceSample,
    astream,
)
from speech.tts.text import TextSpan, split_segments
from streams.errors import ApiError
from streams.runtime import runtime

logger = logging.getLogger(__name__)

__all__ = [
    "LiveJob",
    "SpeechChunk",
    "SynthesisFailed",
    "active_jobs",
    "engine_for",
    "get_registry",
    "live_job",
    "synthesis_stream",
    "usage_for",
]

TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.FAILED})
# Progress is written and pushed at most this often per job (the final state at once).
PROGRESS_INTERVAL_S = 0.2
FIRST_WRITE_WAIT_S = 0.25
# Queued engine chunks are merged up to this size (about 1.5 s of 22 kHz PCM).
COALESCE_BYTES = 64 * 1024
# One output token per 20 ms of audio: see docs/speech.md "Usage".
OUTPUT_TOKENS_PER_SECOND = 50
_TOKEN = re.compile(r"\w+|[^\w\s]")
# streaming_quality -> soxr resampler quality (only used when sample_rate differs)
RESAMPLE_QUALITY = {"fast": "LQ", "balanced": "HQ", "high": "VHQ"}
MAX_SERVICE_CHARS = 100_000


class SynthesisFailed(ApiError):
    """The engine failed after it was accepted (mid-stream or upstream)."""

    status_code = 502


# --- registry ------------------------------------------------------------------------------


@functools.cache
def _piper_installed() -> bool:
    return importlib.util.find_spec("piper") is not None  # a sys.path scan: once


def registry_config() -> dict[str, Any]:
    """The engine registry's config from Django settings (PARLEY_TTS_*)."""
    custom = getattr(settings, "PARLEY_TTS_CONFIG", None)
    if custom:
        return dict(custom)
    engines: dict[str, dict[str, Any]] = {"espeak": {}}
    piper_voice = settings.PARLEY_PIPER_VOICE
    if piper_voice or _piper_installed():
        engines["piper"] = {"model_path": piper_voice} if piper_voice else {}
    if settings.PARLEY_OPENAI_TTS_URL:
        engines["openai"] = {
            "base_url": settings.PARLEY_OPENAI_TTS_URL,
            "api_key": settings.PARLEY_OPENAI_TTS_KEY or None,
            "model": settings.PARLEY_OPENAI_TTS_MODEL,
            "sample_rate": settings.PARLEY_OPENAI_TTS_SAMPLE_RATE,
        }
    default = settings.PARLEY_TTS_ENGINE
    # A default that cannot be built still gets an entry: requests then answer 503 saying why.
    engines.setdefault(default, {})
    return {"default": default, "engines": engines}


_registry: EngineRegistry | None = None
_registry_key: str = ""
_registry_lock = threading.Lock()
_built: set[tuple[int, str]] = set()


def get_registry() -> EngineRegistry:
    """The process's engine registry, rebuilt when the PARLEY_TTS_* settings change."""
    global _registry, _registry_key
    config = registry_config()
    key = repr(sorted(config.items()))
    with _registry_lock:
        if _registry is None or key != _registry_key:
            old, _registry, _registry_key = _registry, EngineRegistry(config), key
            if old is not None:
                with contextlib.suppress(Exception):
                    old.close()
        return _registry


def _build(registry: EngineRegistry, name: str) -> TTSEngine:
    try:
        return registry.engine(name)
    except TTSError:
        raise
    except Exception as error:  # a constructor refusing its options is a config problem
        raise EngineUnavailable(f"engine {name!r} cannot be built: {error}") from error


async def engine_for(registry: EngineRegistry, name: str) -> TTSEngine:
    """The engine, built off the loop the first time (loading a library or model is slow)."""
    key = (id(registry), name)
    if key in _built:
        return registry.engine(name)
    engine = await asyncio.to_thread(_build, registry, name)
    _built.add(key)
    return engine


# --- knobs -> engine parameters ------------------------------------------------------------


def _exaggeration_to_pitch_range(exaggeration: float) -> int:
    # 0.25 -> 25, 0.5 (seed default) -> 50 (espeak default), 2.0 -> 100 (espeak maximum)
    if exaggeration <= 0.5:
        return round(100 * exaggeration)
    return round(50 + (exaggeration - 0.5) / 1.5 * 50)


# Piper's noise_w_scale scales the noise of its duration predictor. Past about 1.2 some
# phonemes are drawn absurdly long (a 2 s sentence came out 38 s at 3.2), so the seed's
# 0.25-2.0 maps onto 0.4-1.1: audibly flatter or livelier rhythm, the same length.
PIPER_NOISE_W_RANGE = (0.4, 0.8, 1.1)  # at exaggeration 0.25, 0.5 (default), 2.0


def _exaggeration_to_noise_w(exaggeration: float) -> float:
    low, default, high = PIPER_NOISE_W_RANGE
    if exaggeration <= 0.5:
        value = low + (exaggeration - 0.25) / 0.25 * (default - low)
    else:
        value = default + (exaggeration - 0.5) / 1.5 * (high - default)
    return round(value, 4)


def engine_params(kind: str, knobs: Mapping[str, Any], given: set[str]) -> dict[str, Any]:
    """What the seed's knobs become for an engine kind (see KNOB_EFFECTS)."""
    if kind == "espeak":
        return {"pitch_range": _exaggeration_to_pitch_range(knobs["exaggeration"])}
    if kind == "piper":
        out: dict[str, Any] = {}
        if "temperature" in given:  # piper's default noise_scale 0.667 at the seed's 0.8
            out["noise_scale"] = round(0.667 * knobs["temperature"] / 0.8, 4)
        if "exaggeration" in given:  # phoneme-length variation, piper's default 0.8 at 0.5
            out["noise_w_scale"] = _exaggeration_to_noise_w(knobs["exaggeration"])
        return out
    if kind == "openai":
        # Only what the client set: real OpenAI refuses fields it does not know.
        forwarded = ("exaggeration", "cfg_weight", "temperature", "instructions")
        return {name: knobs[name] for name in forwarded if name in given}
    return {}


_STREAMING = {
    "speed": "speaking rate",
    "sample_rate": "output rate, resampled with soxr",
    "response_format": "container/codec of the stream",
    "streaming_chunk_size": "maximum characters of each text piece synthesized on its own",
    "streaming_strategy": "where the text is cut into pieces (each piece ends with a pause)",
    "streaming_buffer_size": (
        "when sent: a start-up buffer, the first byte waits until N-1 whole text pieces are "
        "synthesized and they leave together with the first audio of piece N (first-byte "
        "time for smoothness; 1: no wait); always: at most N pieces synthesized ahead of "
        "the piece being sent"
    ),
    "streaming_quality": (
        "mp3/opus/aac bitrate (capped at what the codec does at the rate: X-Bitrate) and flac "
        "compression level; resampler quality when sample_rate differs from the engine's; "
        "no effect on pcm/wav at the engine's rate"
    ),
}
KNOB_EFFECTS: dict[str, dict[str, dict[str, str]]] = {
    "espeak": {
        "effective": {
            **_STREAMING,
            "speed": "words per minute (1.0 = 175 wpm), clamped to 80-700 wpm (0.46-4.0)",
            "exaggeration": (
                "intonation range: 0.25 -> espeak pitch range 25, 0.5 -> 50, 2.0 -> 100"
            ),
        },
        "accepted_without_effect": {
            "cfg_weight": "espeak has no classifier-free guidance",
            "temperature": "espeak is deterministic: there is no sampling",
            "instructions": "espeak cannot follow style instructions",
        },
    },
    "piper": {
        "effective": {
            **_STREAMING,
            "speed": "divides piper's length_scale (0.25-4.0)",
            "temperature": "noise_scale = 0.667 x temperature / 0.8 (when given)",
            "exaggeration": (
                "phoneme-length variation (noise_w_scale, when given): 0.25 -> 0.4, "
                "0.5 -> 0.8 (piper's default), 2.0 -> 1.1, linear between; duration unchanged"
            ),
        },
        "accepted_without_effect": {
            "cfg_weight": "piper has no classifier-free guidance",
            "instructions": "piper cannot follow style instructions",
        },
    },
    "openai": {
        "effective": {
            **_STREAMING,
            "speed": "forwarded (0.25-4.0)",
            "exaggeration": "forwarded when given (Chatterbox uses it)",
            "cfg_weight": "forwarded when given (Chatterbox uses it)",
            "temperature": "forwarded when given (Chatterbox uses it)",
            "instructions": "forwarded when given (gpt-4o-mini-tts uses it)",
        },
        "accepted_without_effect": {},
    },
}


# --- usage ---------------------------------------------------------------------------------


def usage_for(text: str, audio_bytes: int, sample_rate: int) -> dict[str, int]:
    """input_tokens: words and punctuation marks of the text synthesized; output_tokens: one
    per started 20 ms of audio produced."""
    input_tokens = len(_TOKEN.findall(text))
    seconds = audio_bytes / (sample_rate * 2) if sample_rate else 0.0
    output_tokens = math.ceil(round(seconds * OUTPUT_TOKENS_PER_SECOND, 6))
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": input_tokens + output_tokens,
    }


# --- live jobs -----------------------------------------------------------------------------

# This process's jobs (speech.jobs.LIVE: the sweeper heartbeats them and never abandons them).
_LIVE: dict[uuid.UUID, LiveJob] = LIVE
_RECORDERS: set[asyncio.Task] = set()


@dataclass(eq=False)
class LiveJob:
    """A running synthesis in this process; the recorder mirrors it into its SpeechJob row."""

    kind: str
    endpoint: str
    text: str
    model: str
    engine: str
    voice: str
    engine_voice: str
    sample_rate: int
    engine_sample_rate: int
    speed: float
    speed_applied: float
    params: dict[str, Any]
    response_format: str = "pcm"
    stream_format: str = "audio"
    voice_sample_name: str = ""
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    status: str = JobStatus.QUEUED
    current_chunk: int = 0
    total_chunks: int = 0
    audio_bytes: int = 0
    bytes_sent: int = 0
    first_audio_ms: float | None = None
    usage: dict[str, int] = field(default_factory=dict)
    error: str = ""
    error_detail: str = ""
    created_at: datetime = field(default_factory=timezone.now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    t0: float = field(default_factory=time.perf_counter)
    _first_yield_ms: float | None = None
    _first_sent_ms: float | None = None
    _finished_t: float | None = None
    _dirty: asyncio.Event = field(default_factory=asyncio.Event)
    _final: asyncio.Event = field(default_factory=asyncio.Event)
    _output: asyncio.Event = field(default_factory=asyncio.Event)  # first audio out, or done
    recorded: asyncio.Event = field(default_factory=asyncio.Event)
    audio_file: JobAudio | None = None  # the job's audio kept on disk (speech/job_audio.py)

    # -- updates (all on the loop) --------------------------------------------------------

    def produced(self, pcm: bytes) -> None:
        """Count (and keep) PCM the synthesis produced for the client."""
        self.audio_bytes += len(pcm)
        if self.audio_file is not None:
            self.audio_file.write(pcm)

    def touch(self) -> None:
        self._dirty.set()

    def note_sent(self, n_bytes: int) -> None:
        """The consumer wrote ``n_bytes`` to its client."""
        if self._first_sent_ms is None and n_bytes:
            self._first_sent_ms = self.elapsed_ms()
        self.bytes_sent += n_bytes

    def finish(self, status: str, *, error: str = "", detail: str = "") -> None:
        if self.status in TERMINAL_STATUSES:
            return
        self.status = status
        self.error, self.error_detail = error, detail
        self.finished_at = timezone.now()
        self._finished_t = time.perf_counter()
        self.usage = usage_for(self.text, self.audio_bytes, self.sample_rate)
        if self.audio_file is not None:
            self.audio_file.close()
        self._final.set()
        self._output.set()
        self._dirty.set()

    # -- derived ---------------------------------------------------------------------------

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.t0) * 1000

    @property
    def ttfb_ms(self) -> float | None:
        return self._first_sent_ms if self._first_sent_ms is not None else self._first_yield_ms

    @property
    def audio_seconds(self) -> float:
        return self.audio_bytes / (self.sample_rate * 2)

    @property
    def elapsed_seconds(self) -> float:
        end = self._finished_t if self._finished_t is not None else time.perf_counter()
        return end - self.t0

    @property
    def real_time_factor(self) -> float | None:
        if not self.audio_bytes:
            return None
        return self.elapsed_seconds / self.audio_seconds

    def record_fields(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "endpoint": self.endpoint,
            "status": self.status,
            "text": self.text,
            "text_chars": len(self.text),
            "model": self.model,
            "engine": self.engine,
            "voice": self.voice,
            "engine_voice": self.engine_voice or "",
            "response_format": self.response_format,
            "stream_format": self.stream_format,
            "sample_rate": self.sample_rate,
            "engine_sample_rate": self.engine_sample_rate,
            "speed": self.speed,
            "speed_applied": self.speed_applied,
            "params": self.params,
            "voice_sample_name": self.voice_sample_name,
            "current_chunk": self.current_chunk,
            "total_chunks": self.total_chunks,
            "audio_bytes": self.audio_bytes,
            "bytes_sent": self.bytes_sent,
            "audio_seconds": round(self.audio_seconds, 4),
            "first_audio_ms": self.first_audio_ms,
            "ttfb_ms": self.ttfb_ms,
            "elapsed_seconds": round(self.elapsed_seconds, 4) if self.finished_at else None,
            "real_time_factor": self.real_time_factor if self.finished_at else None,
            "usage": self.usage,
            "error": self.error,
            "error_detail": self.error_detail,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "updated_at": timezone.now(),
        }


def live_job(job_id: uuid.UUID) -> LiveJob | None:
    return _LIVE.get(job_id)


def active_jobs() -> list[LiveJob]:
    """This process's jobs that are still queued or running, oldest first."""
    return [job for job in _LIVE.values() if job.status not in TERMINAL_STATUSES]


def _job_insert(fields: dict[str, Any], job_id: uuid.UUID) -> None:
    SpeechJob.objects.create(id=job_id, **fields)


def _job_update(fields: dict[str, Any], job_id: uuid.UUID) -> None:
    SpeechJob.objects.filter(pk=job_id).update(**fields)


async def _push(job: LiveJob) -> None:
    from speech.selectors import progress_of

    message = {"type": "speech.progress", "progress": progress_of(job)}
    layer = get_channel_layer()
    if layer is None:
        return
    for group in (job_group(job.id), ALL_JOBS_GROUP):
        try:
            await layer.group_send(group, message)
        except Exception:
            logger.exception("progress push to %s failed", group)


async def _record(job: LiveJob) -> None:
    """Mirror the live job into its row, coalescing updates; push progress to subscribers."""
    inserted = False
    try:
        # The first write waits until the first audio is out (or a slow engine has taken
        # FIRST_WRITE_WAIT_S): a database write competes for the GIL and the one SQLite
        # writer thread, and must not delay the first byte. The live job answers meanwhile.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(job._output.wait(), FIRST_WRITE_WAIT_S)
        await asyncio.sleep(0)
        while True:
            await job._dirty.wait()
            job._dirty.clear()
            terminal = job.status in TERMINAL_STATUSES
            fields = job.record_fields()
            try:
                if inserted:
                    await runtime.run_db(_job_update, fields, job.id)
                else:
                    await runtime.run_db(_job_insert, fields, job.id)
                    inserted = True
            except Exception:
                logger.exception("recording speech job %s failed", job.id)
            await _push(job)
            if terminal:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(job._final.wait(), PROGRESS_INTERVAL_S)
    finally:
        job.recorded.set()
        _LIVE.pop(job.id, None)


def _start_recording(job: LiveJob) -> None:
    _LIVE[job.id] = job
    job.touch()
    task = asyncio.get_running_loop().create_task(_record(job), name=f"speech-job-{job.id}")
    _RECORDERS.add(task)  # a strong reference: the loop keeps only weak ones
    task.add_done_callback(_RECORDERS.discard)


# --- resolution ----------------------------------------------------------------------------


@dataclass
class _Plan:
    engine: TTSEngine
    engine_name: str
    engine_kind: str
    engine_voice: str | None
    voice_sample: VoiceSample | None


def _stored_voice(name: str) -> dict[str, Any] | None:
    voice = stored_voice_named(name)  # its name or one of its aliases
    if voice is None:
        return None
    found = {"engine": voice.engine, "preset": voice.preset, "sample": None}
    if voice.sample:
        with voice.sample.open("rb") as handle:
            found["sample"] = VoiceSample(
                content=handle.read(),
                filename=voice.sample_filename or voice.sample.name.rsplit("/", 1)[-1],
                content_type=voice.sample_content_type or "application/octet-stream",
            )
    return found


def _engine_error(error: TTSError, *, engine_name: str, voice: str | None) -> ApiError:
    if isinstance(error, ModelNotFound):
        registry = get_registry()
        known = sorted({*registry.models(), *registry.names()})
        return ApiError(
            "unknown_model",
            f"Unknown model {error.model!r}; known: {', '.join(known)}.",
            field="model",
        )
    if isinstance(error, VoiceNotFound):
        return voice_not_found(voice, engine_name=engine_name)
    if isinstance(error, UnsupportedFeature):
        return ApiError(
            "voice_cloning_unsupported",
            f"Engine {engine_name!r} cannot clone a voice from a sample ({error}); "
            "choose a model whose engine clones (GET /v1/models: voice_cloning) or drop the file.",
            field="voice_file",
            status_code=422,
        )
    if isinstance(error, EngineUnavailable):
        return ApiError(
            "engine_unavailable",
            f"Engine {engine_name!r} is not available: {error}",
            field="model",
            status_code=503,
        )
    if isinstance(error, SynthesisError) and error.status_code and 400 <= error.status_code < 500:
        return ApiError("upstream_rejected", str(error), field=None, status_code=400)
    return SynthesisFailed("synthesis_failed", f"Synthesis failed: {error}")


def voice_not_found(
    voice: str | None,
    *,
    engine_name: str,
    openai: list[str] | None = None,
    stored: list[str] | None = None,
    engine_voices: list[str] | None = None,
) -> ApiError:
    """404 `voice_not_found` naming the valid voices (Chatterbox silently falls back to its
    default voice, which its users complained about; OpenAI's own API answers 400).

    The message lists OpenAI's names and the stored voices, counts the engine's own (eSpeak
    has over 150) and suggests the names closest to the one asked for.
    """
    openai, stored, engine_voices = openai or [], stored or [], engine_voices or []
    parts = []
    if openai:
        parts.append(f"{', '.join(openai)} (OpenAI's)")
    if stored:
        parts.append(f"{', '.join(stored[:20])}{' …' if len(stored) > 20 else ''} (stored)")
    if engine_voices:
        parts.append(f"{len(engine_voices)} {engine_name} voices")
    detail = f"Voice {voice!r} not found for engine {engine_name!r}."
    if parts:
        detail += f" Valid voices: {'; '.join(parts)} (GET /v1/voices lists them all)."
    close = _close_names(voice or "", [*openai, *stored, *engine_voices], n=3)
    if close:
        detail += f" Did you mean {' or '.join(map(repr, close))}?"
    return ApiError("voice_not_found", detail, field="voice", status_code=404)


def _close_names(asked: str, names: list[str], *, n: int) -> list[str]:
    """Up to `n` of `names` closest to `asked`, best first, compared in lowercase ("ALLOY"
    finds 'alloy') and returned as spelled. Matching itself stays case-sensitive: OpenAI's
    API takes only its lowercase names, so a hint is enough."""
    spellings: dict[str, list[str]] = {}
    for name in names:
        spellings.setdefault(name.lower(), []).append(name)
    close = difflib.get_close_matches(asked.lower(), list(spellings), n=n)
    return [name for key in close for name in spellings[key]][:n]


def _voice_names(engine: TTSEngine) -> dict[str, list[str]]:
    """The valid voices of a synthesis on `engine`, by kind (database: call off the loop)."""
    try:
        own = [info.id for info in engine.voices()]
    except TTSError:  # a remote engine that cannot list them now
        own = []
    return {
        "openai": list(OPENAI_VOICE_TO_ESPEAK),
        "stored": list(Voice.objects.order_by("name").values_list("name", flat=True)[:200]),
        "engine_voices": own,
    }


async def _plan(
    *, model: str | None, voice: str | None, speed: float, voice_sample: VoiceSample | None
) -> _Plan:
    """The engine and voice of a synthesis. A request that names no voice gets the default
    voice (GET/POST /v1/voices/default) if one is set and the chosen engine has it, else the
    engine's own default."""
    if voice is None:
        default = await runtime.run_db(default_voice_name)
        if default is not None:
            try:
                return await _plan_voice(
                    model=model, voice=default, speed=speed, voice_sample=voice_sample
                )
            except ApiError as error:
                # A default this engine cannot speak (not its voice, a sample it cannot
                # clone): the engine's own default, as if none were set.
                if error.code not in ("voice_not_found", "voice_cloning_unsupported"):
                    raise
    return await _plan_voice(model=model, voice=voice, speed=speed, voice_sample=voice_sample)


async def _plan_voice(
    *, model: str | None, voice: str | None, speed: float, voice_sample: VoiceSample | None
) -> _Plan:
    registry = get_registry()
    try:
        engine_name = registry.engine_name_for_model(model)
    except ModelNotFound as error:
        raise _engine_error(error, engine_name="", voice=voice) from None
    engine_voice: str | None = None
    stored = None
    sample_from_voice = False
    if voice is not None and voice not in OPENAI_VOICE_TO_ESPEAK:
        stored = await runtime.run_db(_stored_voice, voice)
    if stored is not None:
        if stored["engine"] and (model is None or model in OPENAI_MODELS):
            if stored["engine"] not in registry.names():
                raise ApiError(
                    "engine_unavailable",
                    f"Voice {voice!r} needs engine {stored['engine']!r}, "
                    "which is not configured here.",
                    field="voice",
                    status_code=503,
                )
            engine_name = stored["engine"]
        engine_voice = stored["preset"] or None
        if stored["sample"] is not None and voice_sample is None:
            voice_sample = stored["sample"]
            sample_from_voice = True
    else:
        engine_voice = registry.map_voice(engine_name, voice)
    try:
        engine = await engine_for(registry, engine_name)
        engine.check_request(voice=engine_voice, speed=speed, voice_sample=voice_sample)
    except UnsupportedFeature as error:
        if not sample_from_voice:
            raise _engine_error(error, engine_name=engine_name, voice=voice) from None
        # The client sent only `voice`: the stored voice is the problem, not a voice_file.
        raise ApiError(
            "voice_cloning_unsupported",
            f"Voice {voice!r} is a stored sample voice and engine {engine_name!r} cannot "
            "clone a voice from a sample: it needs a cloning engine (set the voice's engine, "
            "or choose a model whose engine clones: GET /v1/models, voice_cloning).",
            field="voice",
            status_code=422,
        ) from None
    except VoiceNotFound:
        names = await runtime.run_db(_voice_names, engine)
        raise voice_not_found(voice, engine_name=engine_name, **names) from None
    except TTSError as error:
        raise _engine_error(error, engine_name=engine_name, voice=voice) from None
    except ValueError as error:
        raise ApiError("invalid_speed", str(error), field="speed") from None
    return _Plan(engine, engine_name, registry.kind_of(engine_name), engine_voice, voice_sample)


async def voice_check(*, voice: str | None, model: str | None = None) -> dict[str, str]:
    """Resolve `voice` (and `model`) as a synthesis would, without synthesizing.

    Returns ``{"engine": <engine name>, "voice": <engine voice id>}``; raises the ApiError a
    synthesis would (``voice_not_found`` 404 with field ``voice``,
    ``engine_unavailable`` 503, ...). Used by surfaces that accept a voice long before they
    speak (the voice agent's ``session.update``).
    """
    plan = await _plan(model=model, voice=voice, speed=1.0, voice_sample=None)
    return {
        "engine": plan.engine_name,
        "voice": plan.engine_voice or (plan.engine.default_voice or ""),
    }


# --- the stream ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpeechChunk:
    pcm: bytes
    job: LiveJob
    piece: int
    marks: tuple[Mark, ...] = ()
    segment: int = 0  # multi-voice: the index of the segment the audio belongs to


class _Done:
    pass


_DONE = _Done()


@dataclass(slots=True)
class _Failure:
    error: BaseException
    piece: int = 0  # the index of the piece being synthesized


def _check_args(text: str, speed: float, sample_rate: int | None) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ApiError("invalid_input", "input must contain some text.", field="input")
    if not is_text(text):
        raise ApiError(
            "invalid_input", "input is not valid Unicode text (a lone surrogate).", field="input"
        )
    if len(text) > MAX_SERVICE_CHARS:
        raise ApiError(
            "input_too_long", f"input is longer than {MAX_SERVICE_CHARS} characters.", field="input"
        )
    if isinstance(speed, bool) or not isinstance(speed, int | float) or not 0.25 <= speed <= 4:
        raise ApiError("invalid_speed", "speed must be between 0.25 and 4.0.", field="speed")
    if sample_rate is not None and (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, int)
        or not 8000 <= sample_rate <= 48000
    ):
        raise ApiError(
            "invalid_sample_rate",
            "sample_rate must be between 8000 and 48000.",
            field="sample_rate",
        )


class _Resampler:
    def __init__(self, in_rate: int, out_rate: int, quality: str) -> None:
        import soxr

        self.stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="int16", quality=quality)

    def feed(self, pcm: bytes, *, last: bool = False) -> bytes:
        import numpy as np

        samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2")
        return self.stream.resample_chunk(samples, last=last).astype("<i2").tobytes()


async def _plans(
    segments: list[Segment],
    *,
    model: str | None,
    voice: str | None,
    speed: float,
    voice_sample: VoiceSample | None,
    multi: bool,
) -> list[_Plan]:
    """Each segment's engine and voice (one resolution per distinct voice and model); for a
    multi-voice request an error names its segment (field ``input[2].voice`` when the segment
    set the voice, ``voice`` when it came from the request)."""
    resolved: dict[tuple[str | None, str | None], _Plan] = {}
    plans = []
    for index, segment in enumerate(segments):
        key = (
            segment.model if segment.model is not None else model,
            segment.voice if segment.voice is not None else voice,
        )
        if key not in resolved:
            try:
                resolved[key] = await _plan(
                    model=key[0], voice=key[1], speed=speed, voice_sample=voice_sample
                )
            except ApiError as error:
                if not multi:
                    raise
                moved = in_segment(error, index)
                if error.field in ("voice", "model") and getattr(segment, error.field) is None:
                    moved.field = error.field  # the request's field, not the segment's
                raise moved from None
        plans.append(resolved[key])
    return plans


def _distinct(values: list[str], limit: int) -> str:
    """``values`` once each, in order, joined with "+", cut to ``limit`` characters."""
    joined = "+".join(dict.fromkeys(value for value in values if value))
    return joined if len(joined) <= limit else joined[: limit - 1] + "…"


async def synthesis_stream(
    *,
    text: str,
    model: str | None,
    voice: str | None,
    speed: float = 1.0,
    params: Mapping[str, Any] | None = None,
    sample_rate: int | None = None,
    job_kind: str = "speech",
    voice_sample: VoiceSample | None = None,
    endpoint: str = "",
    response_format: str = "pcm",
    stream_format: str = "audio",
    segments: Sequence[Segment] | None = None,
) -> AsyncIterator[SpeechChunk]:
    """Synthesize ``text`` and yield PCM as it is produced; see the module docstring.

    ``segments`` (multi-voice): the parts of the text and the voice (and model) of each,
    spoken in order as one stream; ``text`` is then ignored (the job's text is the segments'
    joined with a blank line, and marks' text offsets point into it), ``voice`` and
    ``model`` are the defaults of segments that name none. Every segment's voice is resolved
    before the first chunk, and an error names its segment (field ``input[2].voice``).
    Segments on engines of different rates are each resampled to one output rate
    (``sample_rate``, or the highest of their engines' rates).
    """
    multi = segments is not None
    parts = list(segments) if multi else [Segment(input=text, voice=voice, model=model)]
    if multi:
        if not parts:
            raise ApiError("invalid_input", "input has no segments.", field="input")
        for index, segment in enumerate(parts):
            try:
                _check_args(segment.input, 1.0, None)
            except ApiError as error:
                raise in_segment(error, index) from None
        text = joined_text(parts)
    _check_args(text, speed, sample_rate)
    knobs = parse_knobs(params)
    plans = await _plans(
        parts, model=model, voice=voice, speed=float(speed), voice_sample=voice_sample, multi=multi
    )
    plan, engine = plans[0], plans[0].engine
    out_rate = sample_rate or max(p.engine.sample_rate for p in plans)
    values = {**KNOB_DEFAULTS, **knobs.values}
    # Pieces never span two segments; piece_segment[i] is piece i's segment.
    offsets = segment_offsets(parts)
    split = split_segments(
        [segment.input for segment in parts],
        values["streaming_strategy"],
        values["streaming_chunk_size"],
    )
    pieces = [
        TextSpan(offsets[seg] + span.start, offsets[seg] + span.end, span.text)
        for seg, spans in enumerate(split)
        for span in spans
    ]
    piece_segment = [seg for seg, spans in enumerate(split) for _ in spans]
    recorded_params = {k: v for k, v in values.items() if v is not None}
    if multi:
        recorded_params["segments"] = [
            {
                "voice": segment.voice if segment.voice is not None else (voice or ""),
                "model": segment.model if segment.model is not None else (model or ""),
                "engine": p.engine_name,
                "engine_voice": p.engine_voice or (p.engine.default_voice or ""),
                "engine_sample_rate": p.engine.sample_rate,
                "speed_applied": p.engine.clamp_speed(float(speed)),
                "start": offsets[index],
                "end": offsets[index] + len(segment.input),
            }
            for index, (segment, p) in enumerate(zip(parts, plans, strict=True))
        ]
    records = recorded_params.get("segments", [])
    job = LiveJob(
        kind=job_kind,
        endpoint=endpoint,
        text=text,
        model=_distinct([r["model"] for r in records], 64) if multi else model or "",
        engine=_distinct([p.engine_name for p in plans], 64),
        voice=_distinct([r["voice"] for r in records], 128) if multi else voice or "",
        engine_voice=_distinct(
            [p.engine_voice or (p.engine.default_voice or "") for p in plans], 128
        ),
        sample_rate=out_rate,
        engine_sample_rate=engine.sample_rate,
        speed=float(speed),
        speed_applied=engine.clamp_speed(float(speed)),
        params={**recorded_params, "given": sorted(knobs.given)},
        response_format=response_format,
        stream_format=stream_format,
        voice_sample_name=plan.voice_sample.filename if plan.voice_sample else "",
        total_chunks=len(pieces),
    )
    _start_recording(job)
    job.audio_file = open_job_audio(job.id, out_rate)
    per_engine = [engine_params(p.engine_kind, values, knobs.given) for p in plans]
    quality = RESAMPLE_QUALITY[values["streaming_quality"]]
    buffer_size: int = values["streaming_buffer_size"]
    queue: asyncio.Queue[tuple[int, Any] | _Done | _Failure] = asyncio.Queue()
    consumer_piece = 0
    advanced = asyncio.Event()

    async def produce() -> None:
        index = 0
        try:
            for index, piece in enumerate(pieces):
                # streaming_buffer_size: never more pieces ahead of the client than that.
                while index > consumer_piece + buffer_size:
                    advanced.clear()
                    await advanced.wait()
                speaker = plans[piece_segment[index]]
                chunks = astream(
                    speaker.engine,
                    piece.text,
                    voice=speaker.engine_voice,
                    speed=float(speed),
                    params=per_engine[piece_segment[index]],
                    voice_sample=speaker.voice_sample,
                )
                async with contextlib.aclosing(chunks):
                    async for chunk in chunks:
                        queue.put_nowait((index, chunk))
            queue.put_nowait(_DONE)
        except asyncio.CancelledError:
            raise
        except BaseException as error:
            queue.put_nowait(_Failure(error, index))

    producer = asyncio.get_running_loop().create_task(produce(), name=f"speech-{job.id}")
    job.status = JobStatus.RUNNING
    job.started_at = timezone.now()
    job.current_chunk = 1 if pieces else 0
    job.touch()
    # Each segment is resampled on its own (its engine's rate to out_rate) and its resampler
    # flushed when the next segment begins; marks' audio offsets are into the whole output.
    segment: int | None = None
    resampler: _Resampler | None = None
    ratio = 1.0
    segment_out_start = 0  # output bytes before the current segment
    engine_bytes = 0  # PCM of the current segment at its engine's rate
    # An engine's marks count from the start of its call (one piece): where that began.
    piece_engine_start = 0
    marked_piece = -1
    # streaming_buffer_size, when the client sends it, is also a start-up buffer: the audio of
    # the first N-1 text pieces is held back and leaves, whole, with the first audio of piece
    # N, trading time to first byte for audio in hand (no underrun when the engine is slower
    # than real time). Not sent: the first audio leaves at once, as OpenAI clients expect.
    hold_until = buffer_size - 1 if "streaming_buffer_size" in knobs.given else 0
    held: list[SpeechChunk] = []
    pending: tuple[int, Any] | _Done | _Failure | None = None
    try:
        while True:
            item = pending if pending is not None else await queue.get()
            pending = None
            if isinstance(item, _Done):
                break
            if isinstance(item, _Failure):
                error = item.error
                failed_segment = piece_segment[item.piece] if item.piece < len(pieces) else 0
                speaker = plans[failed_segment]
                if isinstance(error, TTSError):
                    failure = _engine_error(
                        error,
                        engine_name=speaker.engine_name,
                        voice=records[failed_segment]["voice"] if multi else voice,
                    )
                elif isinstance(error, ValueError):
                    failure = ApiError("invalid_params", str(error), field=None)
                else:
                    failure = SynthesisFailed("synthesis_failed", f"Synthesis failed: {error!r}")
                raise in_segment(failure, failed_segment) if multi else failure
            index, chunk = item
            chunk_parts = [chunk]
            # An engine faster than the client leaves chunks queued: send them as one, so
            # per-chunk costs (resampling, a write, a loop turn) do not scale with speed.
            size = len(chunk.pcm)
            while size < COALESCE_BYTES and not queue.empty():
                following = queue.get_nowait()
                if not isinstance(following, tuple) or following[0] != index:
                    pending = following
                    break
                chunk_parts.append(following[1])
                size += len(following[1].pcm)
            if job.first_audio_ms is None:
                job.first_audio_ms = job.elapsed_ms()
            if index != consumer_piece:
                consumer_piece = index
                advanced.set()
                job.current_chunk = index + 1
                job.touch()
            tail = b""
            if piece_segment[index] != segment:
                if resampler is not None:  # the last samples of the segment before
                    tail = resampler.feed(b"", last=True)
                segment = piece_segment[index]
                in_rate = plans[segment].engine.sample_rate
                resampler = _Resampler(in_rate, out_rate, quality) if in_rate != out_rate else None
                ratio = out_rate / in_rate
                segment_out_start = job.audio_bytes + len(tail)
                engine_bytes = 0
            if index != marked_piece:
                marked_piece, piece_engine_start = index, engine_bytes
            marks: list[Mark] = []
            for part in chunk_parts:
                marks += (
                    Mark(
                        mark.kind,
                        pieces[index].start + mark.text_offset,
                        segment_out_start
                        + round((piece_engine_start + mark.audio_offset) * ratio / 2) * 2,
                    )
                    for mark in part.marks
                )
                engine_bytes += len(part.pcm)
            raw = (
                chunk_parts[0].pcm
                if len(chunk_parts) == 1
                else b"".join(part.pcm for part in chunk_parts)
            )
            pcm = resampler.feed(raw) if resampler is not None else raw
            if tail:
                pcm = tail + pcm
            if not pcm and not marks:
                continue
            job.produced(pcm)
            job.touch()
            if index < hold_until:
                held.append(SpeechChunk(pcm, job, index, tuple(marks), segment))
                continue
            if held:  # the start-up buffer leaves with the first audio of the next piece
                pcm = b"".join([*(c.pcm for c in held), pcm])
                marks = [*(m for c in held for m in c.marks), *marks]
                held.clear()
            if job._first_yield_ms is None:
                job._first_yield_ms = job.elapsed_ms()
                job._output.set()
            yield SpeechChunk(pcm, job, index, tuple(marks), segment)
        if held:  # the text had fewer pieces than the start-up buffer
            job._first_yield_ms = job.elapsed_ms()
            job._output.set()
            last = held[-1]
            pcm = b"".join(c.pcm for c in held)
            marks = [m for c in held for m in c.marks]
            yield SpeechChunk(pcm, job, last.piece, tuple(marks), last.segment)
        if resampler is not None and (tail := resampler.feed(b"", last=True)):
            job.produced(tail)
            yield SpeechChunk(tail, job, max(len(pieces) - 1, 0), (), segment or 0)
        job.current_chunk = len(pieces)
        job.finish(JobStatus.COMPLETED)
    except (GeneratorExit, asyncio.CancelledError):
        job.finish(JobStatus.CANCELLED, error="cancelled", detail="the consumer stopped")
        raise
    except ApiError as error:
        job.finish(JobStatus.FAILED, error=error.code, detail=error.detail)
        raise
    except BaseException as error:
        job.finish(JobStatus.FAILED, error="synthesis_failed", detail=repr(error))
        raise
    finally:
        producer.cancel()
