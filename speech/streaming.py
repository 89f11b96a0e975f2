"""The bodies of the /v1/audio/speech family: raw audio in a format, or Server-Sent Events.

``open_speech`` starts synthesis and waits for the first chunk, so every refusal (bad voice,
engine down, upstream 4xx) is still a JSON error with a status code; after that the body
streams. SSE is chosen from the body's ``stream_format``, never from ``Accept`` (the OpenAI
SDK always sends ``Accept: application/octet-stream``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from speech import cache, encoding
from speech.params import KNOB_NAMES, SPEECH_FIELDS, Segment, joined_text, parse_fields
from speech.services import LiveJob, SpeechChunk, synthesis_stream
from speech.tts import VoiceSample, has_speech
from streams.errors import ApiError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    model: str | None
    voice: str | None
    response_format: str
    stream_format: str
    speed: float
    sample_rate: int | None
    knobs: dict[str, Any]  # the seed's knobs, only those the client sent
    # Multi-voice (``input`` as a list): the segments, in order; ``text`` is then their
    # texts joined (speech.params.joined_text), and voice/model the defaults of segments
    # that name none. Empty for a plain text.
    segments: tuple[Segment, ...] = ()

    @property
    def sse(self) -> bool:
        return self.stream_format == "sse"


def speech_request(
    data: Mapping[str, Any],
    *,
    from_form: bool = False,
    wav_stream: bool = False,
    upload: bool = False,
) -> SpeechRequest:
    """Validate a request body; ``wav_stream`` for the seed's continuous-WAV endpoints,
    ``upload`` for the multipart ones (whose voice_file comes separately)."""
    ignore = ("voice_file",) if upload else ()
    parsed = parse_fields(data, SPEECH_FIELDS, from_form=from_form, ignore=ignore)
    values, given = parsed.values, parsed.given
    response_format = values["response_format"]
    if wav_stream:
        if "response_format" in given and response_format != "wav":
            raise ApiError(
                "invalid_response_format",
                "This endpoint streams one continuous WAV; use POST /v1/audio/speech "
                f"for {response_format}.",
                field="response_format",
            )
        if values["stream_format"] != "audio":
            raise ApiError(
                "invalid_stream_format",
                "This endpoint streams one continuous WAV; use POST /v1/audio/speech "
                'with "stream_format": "sse" for Server-Sent Events.',
                field="stream_format",
            )
        response_format = "wav"
    elif values["stream_format"] == "sse" and "response_format" not in given:
        response_format = "pcm"  # the seed's SSE carries raw PCM described by speech.audio.info
    text, segments = values["input"], ()
    if isinstance(text, tuple):  # multi-voice: every segment must have something to say
        segments = text
        for index, segment in enumerate(segments):
            if not has_speech(segment.input):
                raise ApiError(
                    "no_audio",
                    f"input[{index}] has nothing to say: only punctuation, spaces, zero-width "
                    "or control characters.",
                    field=f"input[{index}].input",
                    status_code=422,
                )
        text = joined_text(segments)
    return SpeechRequest(
        text=text,
        segments=segments,
        model=values["model"],
        voice=values["voice"],
        response_format=response_format,
        stream_format=values["stream_format"],
        speed=values["speed"],
        sample_rate=values["sample_rate"],
        knobs={name: values[name] for name in given if name in KNOB_NAMES},
    )


@dataclass
class OpenedSpeech:
    request: SpeechRequest
    job: LiveJob
    first: SpeechChunk | None  # None for a cache hit
    chunks: AsyncIterator[SpeechChunk] | None
    quality: str
    # The compressed formats' encoder (speech.encoding: PyAV or ffmpeg), already started.
    encoder: encoding.Encoder | None = None
    # The synthesis cache (speech.cache): a hit's stored bytes, or a miss's bytes collected
    # for storing; neither when the request is not cacheable.
    stored: AsyncIterator[bytes] | None = None
    pending: cache.PendingEntry | None = None

    @property
    def sample_rate(self) -> int:
        return self.job.sample_rate

    def headers(self) -> dict[str, str]:
        job = self.job
        content_type = (
            "text/event-stream"
            if self.request.sse
            else encoding.CONTENT_TYPES[self.request.response_format]
        )
        return {
            "Content-Type": content_type,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # tell proxies not to hold the stream back
            "X-Speech-Job-Id": str(job.id),
            "X-Speech-Engine": job.engine,
            "X-Sample-Rate": str(job.sample_rate),
            "X-Channels": "1",
            "X-Bits-Per-Sample": "16",
            "X-Speed-Applied": f"{job.speed_applied:g}",
            "X-Cache": self.cache_status,
            **({"X-Bitrate": f"{kbps}k"} if (kbps := self.bitrate_kbps) is not None else {}),
        }

    @property
    def cache_status(self) -> str:
        """HIT: served from the cache; MISS: synthesized, stored if it completes; BYPASS:
        not cacheable (cache off, engine not cached, voice sample, multi-voice)."""
        if self.stored is not None:
            return "HIT"
        return "MISS" if self.pending is not None else "BYPASS"

    @property
    def bitrate_kbps(self) -> int | None:
        """The lossy encoder's bitrate (None for pcm, wav, flac)."""
        return encoding.bitrate_kbps(self.request.response_format, self.sample_rate, self.quality)


async def open_speech(
    request: SpeechRequest,
    *,
    endpoint: str,
    voice_sample: VoiceSample | None = None,
    job_kind: str = "speech",
) -> OpenedSpeech:
    """Start synthesis and wait for its first chunk; raises ApiError before any byte is sent.

    Input with nothing to say (only punctuation, spaces, zero-width or control characters)
    is 422 `no_audio`: an engine would answer it with silence (eSpeak: 0.3 s of it).
    """
    if not has_speech(request.text):
        raise ApiError(
            "no_audio",
            "input has nothing to say: only punctuation, spaces, zero-width or control characters.",
            field="input",
            status_code=422,
        )
    rate = encoding.output_rate(request.response_format, request.sample_rate)
    slot = None
    if not request.segments:  # multi-voice requests are not cached
        slot = await cache.slot_for(
            text=request.text,
            model=request.model,
            voice=request.voice,
            speed=request.speed,
            sample_rate=rate,
            response_format=request.response_format,
            knobs=request.knobs,
            voice_sample=voice_sample,
        )
    if slot is not None and (entry := await cache.lookup(slot)) is not None:
        job = cache.start_hit_job(
            entry=entry,
            text=request.text,
            model=request.model,
            voice=request.voice,
            speed=request.speed,
            knobs=request.knobs,
            response_format=request.response_format,
            stream_format=request.stream_format,
            endpoint=endpoint,
            job_kind=job_kind,
        )
        stored = await cache.hit_body(job, entry.audio)
        quality = request.knobs.get("streaming_quality", "balanced")
        return OpenedSpeech(request, job, None, None, quality, stored=stored)
    chunks = synthesis_stream(
        text=request.text,
        model=request.model,
        voice=request.voice,
        speed=request.speed,
        params=request.knobs,
        sample_rate=rate,
        job_kind=job_kind,
        voice_sample=voice_sample,
        endpoint=endpoint,
        response_format=request.response_format,
        stream_format=request.stream_format,
        segments=request.segments or None,
    )
    quality = request.knobs.get("streaming_quality", "balanced")
    encoder = None
    if request.response_format in encoding.CODECS and rate is not None:
        # The encoder starts (ffmpeg: tens of ms) while the engine works towards its first chunk.
        encoder = asyncio.ensure_future(encoding.spawn(request.response_format, rate, quality))
    try:
        first = await anext(chunks)
    except BaseException as error:
        await chunks.aclose()
        if encoder is not None:
            await _discard(encoder)
        if isinstance(error, StopAsyncIteration):
            raise ApiError(
                "no_audio", "The input produced no audio.", field="input", status_code=422
            ) from None
        raise
    process = await encoder if encoder is not None else None
    pending = None
    if slot is not None:
        pending = cache.PendingEntry(slot)
        cache.mark_when_recorded(first.job, "miss")
    return OpenedSpeech(request, first.job, first, chunks, quality, process, pending=pending)


async def _discard(encoder: asyncio.Future[encoding.Encoder]) -> None:
    with contextlib.suppress(Exception):
        await encoding.stop(await encoder)


async def _teed(body: AsyncIterator[bytes], opened: OpenedSpeech) -> AsyncIterator[bytes]:
    """A miss's bytes as sent, collected; stored only if the body ends whole (a failure or
    a client that leaves raises through here instead)."""
    assert opened.pending is not None
    async with contextlib.aclosing(body):
        async for data in body:
            opened.pending.add(data)
            yield data
    cache.store_when_completed(opened.job, opened.pending)


async def _pcm(opened: OpenedSpeech) -> AsyncIterator[bytes]:
    assert opened.chunks is not None and opened.first is not None
    async with contextlib.aclosing(opened.chunks) as chunks:
        yield opened.first.pcm
        async for chunk in chunks:
            yield chunk.pcm


def _formatted(opened: OpenedSpeech) -> AsyncIterator[bytes]:
    """The requested format's bytes, in the order a file of that format holds them: stored
    (a cache hit), or made now (and collected for the cache on a miss)."""
    if opened.stored is not None:
        return opened.stored
    body = _made(opened)
    return _teed(body, opened) if opened.pending is not None else body


def _made(opened: OpenedSpeech) -> AsyncIterator[bytes]:
    fmt = opened.request.response_format
    if fmt == "pcm":
        return _pcm(opened)
    if fmt == "wav":
        return _with_header(opened)
    assert opened.encoder is not None
    return encoding.encode(_pcm(opened), opened.encoder, fmt)


async def _with_header(opened: OpenedSpeech) -> AsyncIterator[bytes]:
    header = encoding.streamed_wav_header(opened.sample_rate)
    pcm = _pcm(opened)
    async with contextlib.aclosing(pcm):
        first = True
        async for data in pcm:
            # The header leaves with the first audio: the first byte means audio is coming.
            yield header + data if first else data
            first = False


async def audio_body(opened: OpenedSpeech) -> AsyncIterator[bytes]:
    job = opened.job
    body = _formatted(opened)
    async with contextlib.aclosing(body):
        try:
            async for data in body:
                job.note_sent(len(data))
                yield data
        except ApiError as error:
            # Headers are gone: the stream ends short and the job records why.
            logger.warning("speech job %s failed mid-stream: %s", job.id, error.detail)
        except encoding.EncoderError as error:
            job.finish("failed", error="encoder_failed", detail=str(error))
            logger.error("speech job %s: %s", job.id, error)


def sse_event(kind: str, payload: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **payload}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()


async def sse_body(opened: OpenedSpeech) -> AsyncIterator[bytes]:
    """speech.audio.info, then speech.audio.delta per piece of audio, then speech.audio.done
    (or speech.audio.error instead of cutting the stream)."""
    job = opened.job
    info = sse_event(
        "speech.audio.info",
        {
            "sample_rate": opened.sample_rate,
            "channels": 1,
            "bits_per_sample": 16,
            "response_format": opened.request.response_format,
            "job_id": str(job.id),
        },
    )
    body = _formatted(opened)
    pending = info
    async with contextlib.aclosing(body):
        try:
            async for data in body:
                event = sse_event("speech.audio.delta", {"audio": base64.b64encode(data).decode()})
                out, pending = pending + event, b""
                job.note_sent(len(out))
                yield out
        except (ApiError, encoding.EncoderError) as error:
            if isinstance(error, ApiError):
                payload = error.as_dict()
            else:
                job.finish("failed", error="encoder_failed", detail=str(error))
                payload = {"error": "encoder_failed", "detail": str(error), "field": None}
            yield pending + sse_event("speech.audio.error", {**payload, "job_id": str(job.id)})
            return
    done = sse_event("speech.audio.done", {"usage": job.usage, "job_id": str(job.id)})
    job.note_sent(len(pending) + len(done))
    yield pending + done
