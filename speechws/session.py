"""One WS /v1/audio/speech/ws connection: text in increments, speech out sentence by sentence.

The consumer (speechws/consumers.py) hands every frame to a :class:`SpeechSocket` and gives
it two ways to talk back (``send_text``, ``send_bytes``) and one to close. The session:

- cuts the text as it arrives (``speechws.text.TextCutter``): each complete sentence is
  queued at once with the settings in force, and synthesized through
  ``speech.services.synthesis_stream`` (one SpeechJob each, kind ``ws``);
- a **synthesizer** task takes the queue in order and puts audio frames (at most
  ``PARLEY_TTS_WS_FRAME_MS`` each), sentence ends and acknowledgements into an **outbox**
  bounded by audio (``OUTBOX_S`` seconds): a synthesis that runs ahead of sending waits;
- a **sender** task sends them in order, paced on the listener's playhead (the core's
  model, ``streams.audio.advance_playhead``): at most ``PARLEY_TTS_WS_LEAD_MS`` of audio
  ahead of real time, so a client that reads slowly (or not at all) never makes the server
  hold more than that, the outbox and daphne's ping timeout's worth of audio;
- ``cancel`` stops both tasks between two frames (never between an ``audio`` frame and its
  bytes), drops the pending text and whatever was not sent, and acknowledges.

Nothing here raises for a client's fault: refusals are ``error`` frames (``ApiError``'s code,
detail, field), and a client refused more than ``ERROR_BUDGET`` times in ``ERROR_WINDOW_S``
is closed with 4008.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings

from speech.services import engine_for, get_registry, synthesis_stream, usage_for, voice_check
from speech.tts import has_speech
from speechws.alignment import align_words, words_of
from speechws.protocol import (
    DEFAULT_PCM_RATE,
    SessionConfig,
    check_bool,
    check_text,
    config_from,
    only_fields,
    parse_frame,
)
from speechws.text import Piece, TextCutter
from streams.audio import PcmFormat, advance_playhead, wav_header
from streams.auth import authenticate, require_writer
from streams.errors import ApiError
from streams.runtime import runtime

logger = logging.getLogger(__name__)

PATH = "/v1/audio/speech/ws"
CLOSE_NORMAL = 1000
CLOSE_BAD_REQUEST = 4400  # the handshake's settings were refused
CLOSE_UNAUTHORIZED = 4401  # PARLEY_REQUIRE_AUTH and no valid key
CLOSE_POLICY = 4008  # too many refused frames (1008 moved into the range daphne sends)
CLOSE_IDLE = 4408  # nothing from either side for PARLEY_TTS_WS_IDLE_S
ERROR_BUDGET = 100
ERROR_WINDOW_S = 10.0
OUTBOX_S = 2.0  # audio synthesized ahead of the sender, at most (seconds)
BYTES_PER_SAMPLE = 2

SendText = Callable[[str], Awaitable[None]]
SendBytes = Callable[[bytes], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


def _ms(n_bytes: int, rate: int) -> float:
    return round(n_bytes * 1000 / (rate * BYTES_PER_SAMPLE), 1)


def _limits() -> dict[str, Any]:
    return {
        "max_frame_bytes": settings.PARLEY_TTS_WS_MAX_FRAME_BYTES,
        "max_append_chars": settings.PARLEY_TTS_WS_MAX_APPEND_CHARS,
        "max_session_chars": settings.PARLEY_TTS_WS_MAX_SESSION_CHARS,
        "idle_timeout_s": settings.PARLEY_TTS_WS_IDLE_S,
        "lead_ms": settings.PARLEY_TTS_WS_LEAD_MS,
        "frame_ms": settings.PARLEY_TTS_WS_FRAME_MS,
    }


# --- what flows from the synthesizer to the sender -------------------------------------------


@dataclass
class Sentence:
    """One piece of the text being spoken: its id, span, settings and how it went."""

    id: int
    piece: Piece
    config: SessionConfig
    job_id: str | None = None
    audio_bytes: int = 0  # synthesized
    sent_bytes: int = 0
    audio_start: int | None = None  # session audio offset (bytes) of its first frame sent
    usage: dict[str, int] = field(default_factory=dict)


@dataclass
class Frame:
    sentence: Sentence
    pcm: bytes
    offset: int  # bytes into the sentence's audio
    words: list[tuple[int, int, float]]  # (start, end, ms into the sentence) starting here
    job: Any  # speech.services.LiveJob: note_sent() as the bytes leave


@dataclass
class SentenceDone:
    sentence: Sentence
    status: str  # completed, failed, silent
    alignment: dict[str, Any] = field(default_factory=dict)
    error: ApiError | None = None


@dataclass
class Ack:
    message: dict[str, Any]


@dataclass
class Finish:
    pass


Work = Piece | Ack | Finish  # what the synthesizer's queue holds (Piece with its settings)


class Outbox:
    """A FIFO between the synthesizer and the sender, bounded by the audio bytes it holds
    (one item always fits, so a frame larger than the bound still passes)."""

    def __init__(self, max_bytes: int) -> None:
        self.items: deque[Any] = deque()
        self.bytes = 0
        self.max_bytes = max_bytes
        self._changed = asyncio.Condition()

    async def put(self, item: Any) -> None:
        size = len(item.pcm) if isinstance(item, Frame) else 0
        async with self._changed:
            await self._changed.wait_for(
                lambda: not self.bytes or self.bytes + size <= self.max_bytes
            )
            self.items.append(item)
            self.bytes += size
            self._changed.notify_all()

    async def get(self) -> Any:
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self.items))
            item = self.items.popleft()
            if isinstance(item, Frame):
                self.bytes -= len(item.pcm)
            self._changed.notify_all()
            return item

    def clear(self) -> None:
        self.items.clear()
        self.bytes = 0


class SpeechSocket:
    """The session of one connection. See the module docstring."""

    def __init__(self, *, send_text: SendText, send_bytes: SendBytes, close: Close) -> None:
        self.id = uuid.uuid4()
        self._send_text_raw = send_text
        self._send_bytes_raw = send_bytes
        self._close = close
        self.config = SessionConfig()
        self.engine = ""
        self.engine_voice = ""
        self.sample_rate = DEFAULT_PCM_RATE
        self.cutter = TextCutter(self.config.max_sentence_chars)
        self.loop = asyncio.get_running_loop()
        self.work: asyncio.Queue[tuple[Work, SessionConfig | None]] = asyncio.Queue()
        self.outbox = Outbox(1)
        self.synthesizer: asyncio.Task | None = None
        self.sender: asyncio.Task | None = None
        self.watchdog: asyncio.Task | None = None
        self.send_lock = asyncio.Lock()
        self.open = False
        self.closed = False
        self.ending = False
        self.format_locked = False
        self.header_sent = False
        self.sentence_ids = 0
        self.flush_ids = 0
        self.frame_seq = 0
        self.audio_sent = 0  # bytes of audio sent this session (the timeline)
        self.playhead: float | None = None
        self.sentences_spoken = 0
        self.cancels = 0
        self.usage = {"input_tokens": 0, "output_tokens": 0, "total_tokens": 0}
        self.last_activity = time.monotonic()
        self.errors: deque[float] = deque()
        self.current: Sentence | None = None  # being synthesized

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self, *, query: dict[str, str], authorization: str | None) -> bool:
        """Check the key and the handshake's settings; send ``session.created``. False (and
        the socket closed) when refused."""
        try:
            principal = await runtime.run_db(authenticate, authorization) if authorization else None
            require_writer(principal)
        except ApiError as error:
            await self._refuse_and_close(error, CLOSE_UNAUTHORIZED)
            return False
        try:
            config = config_from(query, self.config, from_query=True)
            await self._apply(config)
        except ApiError as error:
            await self._refuse_and_close(error, CLOSE_BAD_REQUEST)
            return False
        self.open = True
        self._start_tasks()
        self.watchdog = self.loop.create_task(self._watch_idle(), name=f"speechws-idle-{self.id}")
        await self._send_control({"type": "session.created", "session": self.describe()})
        return True

    async def stop(self) -> None:
        """The client is gone (or the session closed): stop synthesis and every task.
        Idempotent; a session closed by itself (``session.done``, idle) still gets here."""
        self.closed = True
        tasks = [
            t
            for t in (self.synthesizer, self.sender, self.watchdog)
            if t is not None and not t.done()
        ]
        current = asyncio.current_task()
        for task in tasks:
            if task is not current:
                task.cancel()
        await asyncio.gather(*(t for t in tasks if t is not current), return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        config = self.config
        return {
            "id": str(self.id),
            "model": config.model,
            "engine": self.engine,
            "voice": config.voice,
            "engine_voice": self.engine_voice,
            "response_format": config.response_format,
            "sample_rate": self.sample_rate,
            "channels": 1,
            "bits_per_sample": 16,
            "speed": config.speed,
            "audio_transport": config.audio_transport,
            "max_sentence_chars": config.max_sentence_chars,
            "params": dict(config.knobs),
            "limits": _limits(),
        }

    async def _apply(self, config: SessionConfig) -> None:
        """Resolve the voice and model as a synthesis would (voice_not_found etc.), then
        make ``config`` the session's."""
        resolved = await voice_check(voice=config.voice, model=config.model)
        rate = config.sample_rate
        if not self.format_locked:
            if rate is None and config.response_format == "wav":
                engine = await engine_for(get_registry(), resolved["engine"])
                rate = engine.sample_rate
            self.sample_rate = rate or DEFAULT_PCM_RATE
        self.config = config
        self.engine, self.engine_voice = resolved["engine"], resolved["voice"]
        self.cutter.max_chars = config.max_sentence_chars
        self.outbox.max_bytes = int(OUTBOX_S * self.sample_rate * BYTES_PER_SAMPLE)

    def _start_tasks(self) -> None:
        self.synthesizer = self.loop.create_task(self._synthesize(), name=f"speechws-{self.id}")
        self.sender = self.loop.create_task(self._send_loop(), name=f"speechws-send-{self.id}")

    # --- client frames -------------------------------------------------------------------

    async def receive_text(self, raw: str) -> None:
        if not self.open or self.closed:
            return
        self.last_activity = time.monotonic()
        limit = settings.PARLEY_TTS_WS_MAX_FRAME_BYTES
        if len(raw) > limit or len(raw.encode("utf-8", "surrogatepass")) > limit:
            await self._refuse(
                ApiError(
                    "frame_too_large",
                    f"A frame may carry at most {limit} bytes; send text in smaller "
                    "input_text.append frames.",
                )
            )
            return
        try:
            kind, body = parse_frame(raw)
            if self.ending:
                raise ApiError(
                    "session_ending",
                    "end was received: the session finishes what it has and closes; "
                    "open a new one for more text.",
                    field="type",
                )
            await getattr(self, "_on_" + kind.replace(".", "_"))(body)
        except ApiError as error:
            await self._refuse(error)

    async def receive_bytes(self, data: bytes) -> None:
        if not self.open or self.closed:
            return
        self.last_activity = time.monotonic()
        await self._refuse(
            ApiError(
                "binary_not_accepted",
                "This socket takes text in JSON input_text.append frames; a binary frame "
                f"({len(data)} bytes) carries nothing it can use.",
            )
        )

    async def _on_session_update(self, body: dict[str, Any]) -> None:
        data = {k: v for k, v in body.items() if k != "type"}
        config = config_from(data, self.config, locked=self.format_locked)
        await self._apply(config)
        await self._send_control({"type": "session.updated", "session": self.describe()})

    async def _on_input_text_append(self, body: dict[str, Any]) -> None:
        only_fields(body, ("text", "flush"))
        text = check_text(body.get("text"), limit=settings.PARLEY_TTS_WS_MAX_APPEND_CHARS)
        flush = check_bool(body, "flush")
        most = settings.PARLEY_TTS_WS_MAX_SESSION_CHARS
        if self.cutter.length + len(text) > most:
            raise ApiError(
                "session_text_limit",
                f"A session takes at most {most} characters of text; this one has "
                f"{self.cutter.length} and the frame {len(text)} more (refused whole). "
                "Send end, and open a new session for more.",
                field="text",
            )
        if text:
            self.format_locked = True
            self._queue(self.cutter.append(text))
        if flush:
            self._flush()

    async def _on_input_text_flush(self, body: dict[str, Any]) -> None:
        only_fields(body, ())
        self._flush()

    async def _on_cancel(self, body: dict[str, Any]) -> None:
        only_fields(body, ())
        await self._cancel()

    async def _on_end(self, body: dict[str, Any]) -> None:
        only_fields(body, ())
        self.ending = True
        self._queue(self.cutter.flush())
        self.work.put_nowait((Finish(), None))

    def _queue(self, pieces: list[Piece]) -> None:
        for piece in pieces:
            self.work.put_nowait((piece, self.config))

    def _flush(self) -> None:
        self._queue(self.cutter.flush())
        self.flush_ids += 1
        ack = {"type": "input_text.flushed", "flush_id": self.flush_ids}
        self.work.put_nowait((Ack(ack), None))

    async def _cancel(self) -> None:
        """Drop the pending text, stop the synthesis in flight, send nothing more of it."""
        async with self.send_lock:  # the sender is between two frames
            current = self.current  # cleared as its task stops
            tasks = [t for t in (self.synthesizer, self.sender) if t is not None]
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        dropped_sentences: list[int] = []
        starts: list[int] = []
        if current is not None:
            dropped_sentences.append(current.id)
            starts.append(current.piece.start)
        for item in self.outbox.items:
            sentence = getattr(item, "sentence", None)
            if sentence is not None and sentence.id not in dropped_sentences:
                dropped_sentences.append(sentence.id)
                starts.append(sentence.piece.start)
        while not self.work.empty():  # flush acknowledgements too: `cancelled` answers them
            item, _config = self.work.get_nowait()
            if isinstance(item, Piece):
                starts.append(item.start)
        self.outbox.clear()
        self.current = None
        dropped_from, dropped_to = self.cutter.drop()
        start = min([*starts, dropped_from])
        self.cancels += 1
        self.playhead = None  # the client stops what it plays; new audio plays at once
        self._start_tasks()
        await self._send_control(
            {
                "type": "cancelled",
                "text_start": start,
                "text_end": dropped_to,
                "sentences": sorted(dropped_sentences),
                "audio_ms": _ms(self.audio_sent, self.sample_rate),
            }
        )

    # --- synthesis -----------------------------------------------------------------------

    async def _synthesize(self) -> None:
        while True:
            item, config = await self.work.get()
            if isinstance(item, Piece):
                assert config is not None
                self.sentence_ids += 1
                sentence = Sentence(self.sentence_ids, item, config)
                self.current = sentence
                try:
                    await self._speak(sentence)
                finally:
                    self.current = None
            else:
                await self.outbox.put(item)

    async def _speak(self, sentence: Sentence) -> None:
        piece, config = sentence.piece, sentence.config
        if not has_speech(piece.text):
            await self.outbox.put(SentenceDone(sentence, "silent"))
            return
        rate = self.sample_rate
        frame_bytes = max(2, rate * BYTES_PER_SAMPLE * settings.PARLEY_TTS_WS_FRAME_MS // 1000)
        frame_bytes -= frame_bytes % 2
        spans = words_of(piece.text)
        word_starts = [start for start, _end in spans]
        marked: set[int] = set()
        marks: list[tuple[str, int, float]] = []
        waiting: deque[tuple[int, int, int]] = deque()  # word marks not yet in a frame
        job = None
        chunks = synthesis_stream(
            text=piece.text,
            model=config.model,
            voice=config.voice,
            speed=config.speed,
            params=config.knobs,
            sample_rate=rate,
            job_kind="ws",
            endpoint=PATH,
            response_format=config.response_format,
            stream_format="ws",
        )
        try:
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    job = chunk.job
                    sentence.job_id = str(job.id)
                    for mark in chunk.marks:
                        marks.append((mark.kind, mark.text_offset, _ms(mark.audio_offset, rate)))
                        index = bisect.bisect_right(word_starts, mark.text_offset) - 1
                        # A word's first mark only (eSpeak marks "3.30" as three words).
                        if mark.kind == "word" and index >= 0 and index not in marked:
                            marked.add(index)
                            start, end = spans[index]
                            waiting.append((start, end, mark.audio_offset))
                    pcm = chunk.pcm
                    for at in range(0, len(pcm), frame_bytes):
                        part = pcm[at : at + frame_bytes]
                        offset = sentence.audio_bytes
                        end = offset + len(part)
                        words = []
                        while waiting and waiting[0][2] < end:
                            start, stop, audio = waiting.popleft()
                            words.append((start, stop, _ms(audio, rate)))
                        sentence.audio_bytes = end
                        await self.outbox.put(Frame(sentence, part, offset, words, job))
        except ApiError as error:
            # Bad settings for this sentence (a stored voice deleted since, an engine down)
            # or a synthesis that failed midway: said, and the session goes on.
            await self.outbox.put(SentenceDone(sentence, "failed", error=error))
            return
        except Exception as error:  # a bug: logged with its traceback, the client told
            logger.exception("speech socket %s: sentence %s failed", self.id, sentence.id)
            failure = ApiError("synthesis_failed", f"Synthesis failed: {error!r}")
            await self.outbox.put(SentenceDone(sentence, "failed", error=failure))
            return
        duration = _ms(sentence.audio_bytes, rate)
        words, source = align_words(piece.text, duration, marks)
        if job is not None:
            sentence.usage = usage_for(piece.text, sentence.audio_bytes, rate)
        alignment = {"source": source, "words": words}
        await self.outbox.put(SentenceDone(sentence, "completed", alignment))

    # --- sending -------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        try:
            while True:
                item = await self.outbox.get()
                if isinstance(item, Frame):
                    await self._send_frame(item)
                elif isinstance(item, SentenceDone):
                    await self._send_done(item)
                elif isinstance(item, Ack):
                    await self._send_json(item.message)
                elif isinstance(item, Finish):
                    await self._finish()
                    return
        except SocketGone:
            return

    async def _send_frame(self, frame: Frame) -> None:
        rate = self.sample_rate
        bytes_per_second = rate * BYTES_PER_SAMPLE
        lead = settings.PARLEY_TTS_WS_LEAD_MS / 1000
        if self.playhead is not None:
            wait = self.playhead - lead - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
        async with self.send_lock:
            sentence = frame.sentence
            if sentence.audio_start is None:
                sentence.audio_start = self.audio_sent
            base_ms = _ms(sentence.audio_start, rate)
            piece = sentence.piece
            message: dict[str, Any] = {
                "type": "audio",
                "seq": self.frame_seq,
                "sentence": sentence.id,
                "text_start": piece.start,
                "text_end": piece.end,
                "audio_start_ms": _ms(self.audio_sent, rate),
                "duration_ms": _ms(len(frame.pcm), rate),
                "bytes": len(frame.pcm),
                "words": [
                    {
                        "start": piece.start + start,
                        "end": piece.start + end,
                        "start_ms": round(base_ms + ms, 1),
                    }
                    for start, end, ms in frame.words
                ],
            }
            if self.config.response_format == "wav" and not self.header_sent:
                header = wav_header(PcmFormat(sample_rate_hz=rate), None)
                await self._send_audio(header, {"type": "audio.header", "bytes": len(header)})
                self.header_sent = True
            await self._send_audio(frame.pcm, message)
            frame.job.note_sent(len(frame.pcm))
            self.frame_seq += 1
            self.audio_sent += len(frame.pcm)
            sentence.sent_bytes += len(frame.pcm)
            _start, self.playhead = advance_playhead(
                self.playhead, self.loop.time(), len(frame.pcm) / bytes_per_second
            )

    async def _send_audio(self, pcm: bytes, message: dict[str, Any]) -> None:
        """``message`` then the bytes (binary transport), or the bytes inside it (base64)."""
        if self.config.audio_transport == "base64":
            await self._send_json({**message, "audio": base64.b64encode(pcm).decode("ascii")})
            return
        await self._send_json(message)
        await self._send_bytes(pcm)

    async def _send_done(self, done: SentenceDone) -> None:
        sentence, piece = done.sentence, done.sentence.piece
        rate = self.sample_rate
        start = sentence.audio_start if sentence.audio_start is not None else self.audio_sent
        if done.error is not None:
            await self._send_json(
                {
                    "type": "error",
                    "code": done.error.code,
                    "detail": done.error.detail,
                    "field": done.error.field,
                    "sentence": sentence.id,
                }
            )
        words = done.alignment.get("words", [])
        message = {
            "type": "sentence.done",
            "sentence": sentence.id,
            "status": done.status,
            "text_start": piece.start,
            "text_end": piece.end,
            "text": piece.text,
            "job_id": sentence.job_id,
            "audio_start_ms": _ms(start, rate),
            "audio_ms": _ms(sentence.sent_bytes, rate),
            "alignment": {
                "source": done.alignment.get("source"),
                "words": [
                    word.as_dict(text_base=piece.start, audio_base_ms=_ms(start, rate))
                    for word in words
                ],
            },
        }
        if done.status == "completed":
            self.sentences_spoken += 1
            for key, value in sentence.usage.items():
                self.usage[key] = self.usage.get(key, 0) + value
        await self._send_json(message)

    async def _finish(self) -> None:
        await self._send_json(
            {
                "type": "session.done",
                "session_id": str(self.id),
                "usage": {
                    "characters": self.cutter.length,
                    "sentences": self.sentences_spoken,
                    "audio_bytes": self.audio_sent,
                    "audio_ms": _ms(self.audio_sent, self.sample_rate),
                    **self.usage,
                },
                "cancels": self.cancels,
            }
        )
        await self._close(CLOSE_NORMAL, "done")
        self.closed = True

    # --- refusals, idle, low-level sends -------------------------------------------------

    async def _refuse(self, error: ApiError) -> None:
        frame = {"type": "error", "code": error.code, "detail": error.detail}
        if error.field:
            frame["field"] = error.field
        await self._send_control(frame)
        now = self.loop.time()
        self.errors.append(now)
        while self.errors and self.errors[0] < now - ERROR_WINDOW_S:
            self.errors.popleft()
        if len(self.errors) > ERROR_BUDGET and not self.closed:
            await self._close(CLOSE_POLICY, "too many invalid frames")
            await self.stop()

    async def _refuse_and_close(self, error: ApiError, code: int) -> None:
        frame = {"type": "error", "code": error.code, "detail": error.detail}
        if error.field:
            frame["field"] = error.field
        await self._send_json(frame)
        await self._close(code, error.code)
        self.closed = True

    async def _watch_idle(self) -> None:
        with contextlib.suppress(SocketGone):
            await self._idle_loop()

    async def _idle_loop(self) -> None:
        idle = settings.PARLEY_TTS_WS_IDLE_S
        while not self.closed:
            await asyncio.sleep(min(1.0, idle / 4))
            if time.monotonic() - self.last_activity > idle:
                await self._send_control(
                    {
                        "type": "error",
                        "code": "idle_timeout",
                        "detail": f"Nothing was sent or received for {idle:g} s; closing.",
                    }
                )
                await self._close(CLOSE_IDLE, "idle_timeout")
                await self.stop()
                return

    async def _send_control(self, message: dict[str, Any]) -> None:
        """A frame sent from outside the sender (an answer to the client, an error): never
        between an ``audio`` frame and its bytes, which the sender sends holding the lock."""
        async with self.send_lock:
            await self._send_json(message)

    async def _send_json(self, message: dict[str, Any]) -> None:
        await self._send_text(json.dumps(message, separators=(",", ":"), ensure_ascii=False))

    async def _send_text(self, text: str) -> None:
        try:
            await self._send_text_raw(text)
        except Exception as error:
            raise SocketGone from error
        self.last_activity = time.monotonic()

    async def _send_bytes(self, data: bytes) -> None:
        try:
            await self._send_bytes_raw(data)
        except Exception as error:
            raise SocketGone from error
        self.last_activity = time.monotonic()


class SocketGone(Exception):
    """The client went away while a frame was being sent."""


__all__ = ["PATH", "SocketGone", "SpeechSocket"]
