"""One voice-agent session: VAD → STT → responder → TTS, on the core, with barge-in.

The consumer (agents/consumers.py) hands every client frame to :class:`AgentSession` and
sends what it queues. Nothing here blocks the event loop: the VAD runs inline (0.15 ms per
32 ms frame), Whisper on its engine's own thread, database writes on the runtime's executor
through one ordered queue per session (so the room sees the agent's cut before the user's
next words), and the outgoing frames go through one ordered queue too.

Time: ``loop.time()`` (monotonic seconds) for every latency and for the listener's playhead
(agents/playout.py); audio offsets in ms of 16 kHz input audio since the session began.

The contract is seed 003 (``../shared/seeds/003_*``) with the fields of issue #7; the whole
protocol is described in docs/agent.md.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import dataclasses
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import soxr
from django.conf import settings
from django.utils import timezone

from agents import services
from agents.engines.stt import SttEngine, SttError
from agents.engines.vad import (
    FRAME_MS,
    FRAME_SAMPLES,
    TurnDetector,
    VadConfig,
    VadConfigError,
    VadStream,
)
from agents.playout import Playout, SpokenSpan, heard_text
from agents.protocol import (
    MAX_INSTRUCTIONS_CHARS,
    MAX_TEXT_CHARS,
    AudioFormat,
    ProtocolError,
    SequenceWindow,
    check_frames,
    check_text,
    parse_chunk,
    parse_format,
    parse_frame,
    utterance_id,
)
from agents.sentences import SentenceSplitter
from agents.stt import get_stt
from chat import responders
from speech.services import synthesis_stream, voice_check
from streams.errors import ApiError
from streams.runtime import runtime

logger = logging.getLogger(__name__)

RATE = 16000  # the pipeline's own rate: VAD and STT
FRAME_BYTES = FRAME_SAMPLES * 2
CORE_CHUNK_MS = 100  # user and agent audio enter the core in pieces of this length
AGENT_CHUNK_MS = 100  # agent.audio.chunk length
SPECULATE_AFTER_MS = 160  # trailing silence that starts a speculative final transcript
PARTIAL_EVERY_MS = 1000  # new speech between two partial transcripts
# No partial in a turn's first seconds: Whisper runs one job at a time and a job cannot be
# stopped, so a partial started near the end of a short command delays its final (measured:
# p50 reply latency 635 ms with such a wait, 361 ms without; docs/benchmarks.md).
PARTIAL_AFTER_MS = 2000
ERROR_BUDGET = 100  # refused frames per ERROR_WINDOW_S before the client counts as abusive
ERROR_WINDOW_S = 10.0
AUDIO_BURST_S = 30.0  # audio a client may send ahead of real time...
AUDIO_REFILL = 4.0  # ...refilled at this many times real time
# 1008 (policy violation) is what the situation calls for, but daphne's autobahn only sends
# 1000 or 3000-4999: 4008 is the application-range twin.
CLOSE_POLICY = 4008
CLOSE_ROOM_TAKEN = 4409
FLOOR_WAIT_S = 3.0  # how long a side's audio waits while another speaker holds the floor
OWN_FLOOR_WAIT_S = 120.0  # ...and while the session's other side is still playing in the room
HISTORY_CHARS = 24000  # the conversation a reply sends its responder: the newest turns that fit
HISTORY_TURNS = 100  # turns kept in memory
TEXT_BURST = 5  # typed turns a client may send at once...
TEXT_REFILL_S = 1.0  # ...then one per this many seconds
# Sessions closing in the background (their floor writes finish after the socket is gone).
_closing: set[asyncio.Task] = set()

Frame = dict[str, Any]


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# Transcriptions in flight in this process: partials only run when Whisper is idle.
_stt_inflight = 0


async def _transcribe(engine: SttEngine, pcm: bytes) -> tuple[str, float]:
    """(text, seconds of compute) of 16 kHz PCM16 mono."""
    global _stt_inflight
    _stt_inflight += 1
    started = time.perf_counter()
    try:
        transcript = await engine.transcribe(pcm, sample_rate=RATE)
    finally:
        _stt_inflight -= 1
    return transcript.text.strip(), time.perf_counter() - started


@dataclass
class UserTurn:
    """The user's utterance being heard: its audio (16 kHz), its core stream, its STT state."""

    utterance_id: str
    stream_id: str
    onset_ms: int  # audio offset of the speech onset (or of the start, manual mode)
    started_at: float
    pcm: bytearray = field(default_factory=bytearray)
    core_sent: int = 0  # bytes of pcm already queued for the core
    core_seq: int = 0
    index: int = 0  # its exchange's number in the session
    record: ExchangeRecord | None = None  # once the turn has ended
    finished: bool = False  # complete: its final chunk goes with the next _to_core
    text: str = ""  # the transcript its final chunk carries
    last_speech_byte: int = 0  # end of the last frame the VAD took for speech
    speech_end_at: float | None = None  # loop time the last speech frame was processed
    spec_len: int = -1  # pcm length the speculative transcription covers
    spec_task: asyncio.Task | None = None
    partial_len: int = 0
    partial_task: asyncio.Task | None = None


@dataclass
class Pending:
    """An exchange that has not started speaking yet.

    While it is ``transcribing`` it is never cancelled: if the user talks on, it is
    ``superseded`` — it finishes its transcript (a user turn's words are never lost) and
    hands it to the next exchange, which answers both turns together.
    """

    task: asyncio.Task
    turn: UserTurn | None
    record: ExchangeRecord
    transcribing: bool = True
    superseded: bool = False
    transcript: asyncio.Future = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class ExchangeRecord:
    """The Exchange row of a turn; its pk is known once the records writer created it."""

    pk: int | None = None
    created: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Reply:
    """One agent reply: the responder's text, its audio on the listener's playhead."""

    utterance_id: str
    stream_id: str
    record: ExchangeRecord
    user_text: str
    user_utterance_id: str
    end_of_turn_at: float
    playout: Playout
    metrics: dict[str, Any]
    # Fixed when the reply starts: a session.update mid-reply applies to the next one.
    fmt: AudioFormat = field(default_factory=AudioFormat)
    voice: str | None = None
    task: asyncio.Task | None = None
    text: str = ""
    spans: list[SpokenSpan] = field(default_factory=list)
    current: SpokenSpan | None = None  # the sentence being spoken, audio_end so far
    produced: int = 0  # bytes of audio synthesized (and sent or about to be)
    seq: int = 0
    core_seq: int = 0
    sending_done: bool = False
    over: bool = False  # interrupted, failed or played to the end
    responder: str = ""

    def speaking(self, now: float) -> bool:
        if self.over:
            return False
        return not self.sending_done or self.playout.playing(now)

    def heard(self, now: float) -> tuple[int, str]:
        heard_bytes = self.playout.heard_bytes(now)
        current = self.current
        spans = [
            *self.spans,
            *([current] if current and current.audio_end > current.audio_start else []),
        ]
        return _ms(heard_bytes / self.playout.bytes_per_second), heard_text(
            self.text, spans, heard_bytes
        )


class AgentSession:
    """The pipeline of one ``/ws/agent`` connection. See the module docstring."""

    def __init__(
        self,
        *,
        send: Callable[[Frame], Awaitable[None]],
        close: Callable[[int, str], Awaitable[None]],
        room: str | None,
        client_info: dict[str, Any],
    ) -> None:
        self._send_frame = send
        self._close = close
        self.id = uuid.uuid4()
        self.room = room or f"agent-{self.id.hex[:12]}"
        self.user_speaker = f"user:{self.id.hex}"
        self.agent_speaker = f"agent:{self.id.hex}"
        self.client_info = client_info
        self.loop = asyncio.get_running_loop()
        # Settings that session.update changes.
        self.turn_detection = "server_vad"
        self.vad_config = VadConfig(
            threshold=settings.PARLEY_AGENT_VAD_THRESHOLD,
            silence_ms=settings.PARLEY_AGENT_SILENCE_MS,
            barge_in_ms=settings.PARLEY_AGENT_BARGE_IN_MS,
        )
        self.output_format = AudioFormat(sample_rate_hz=RATE)
        self.voice: str | None = None
        self.tts = {"engine": "", "voice": ""}
        self.instructions = ""
        self.stt: SttEngine = get_stt()
        names = settings.PARLEY_AGENT_RESPONDER or settings.PARLEY_RESPONDER
        self.chain = [responders.build_responder(n.strip()) for n in names.split(",") if n.strip()]
        self.history: list[responders.Turn] = []
        # Input.
        self.input_format: AudioFormat | None = None  # the open client stream's format
        self.client_utterance: str | None = None
        self.client_turns = 0  # VAD turns found in the open client stream
        self.window = SequenceWindow()
        self.resampler: soxr.ResampleStream | None = None
        self.frame_buf = bytearray()
        self.vad = VadStream()
        self.detector = TurnDetector(self.vad_config)
        self.preroll: collections.deque[bytes] = collections.deque()
        self.turn: UserTurn | None = None
        self.user_streams: collections.deque[UserTurn] = collections.deque()  # not yet final
        self.carry_text = ""  # transcript of a turn whose reply the user talked over
        self.exchanges = 0
        self.max_turn_bytes = int(settings.PARLEY_AGENT_MAX_UTTERANCE_S * RATE * 2)
        # Output and work.
        self.reply: Reply | None = None
        self.pending: Pending | None = None  # an exchange before its reply's first audio
        self.carry_from: Pending | None = None  # a superseded exchange whose words carry over
        self.outbox: asyncio.Queue[Frame | None] = asyncio.Queue()
        # Two ordered writers: the room's audio (which may wait for the floor) and the
        # records (which never wait for anything but the database).
        self.floor_ops: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self.record_ops: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self.off_floor: set[str] = set()  # streams the room never got (the floor was held)
        self.text_credit = float(TEXT_BURST)
        self.text_credit_at = self.loop.time()
        self.closing = False
        self.tasks: set[asyncio.Task] = set()
        self.errors: collections.deque[float] = collections.deque()
        self.audio_credit = AUDIO_BURST_S
        self.credit_at = self.loop.time()
        self.closed = False
        self.started = False

    # --- lifecycle -------------------------------------------------------------------------

    def session_info(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "room": self.room,
            "user_speaker": self.user_speaker,
            "agent_speaker": self.agent_speaker,
            "turn_detection": self.turn_detection,
            "input_format": AudioFormat().as_dict(),
            "output_format": self.output_format.as_dict(),
            "vad": dataclasses.asdict(self.vad_config),
            "stt": self.stt.info(),
            "tts": self.tts,
            "voice": self.voice,
            "responder": ",".join(r.name for r in self.chain),
            "instructions": self.instructions,
            "lead_ms": settings.PARLEY_AGENT_LEAD_MS,
        }

    def _record_fields(self) -> dict[str, Any]:
        return {
            "user_speaker": self.user_speaker,
            "agent_speaker": self.agent_speaker,
            "stt_engine": self.stt.name,
            "tts_engine": self.tts["engine"],
            "voice": self.voice or "",
            "responder": ",".join(r.name for r in self.chain),
            "instructions": self.instructions,
            "turn_detection": self.turn_detection,
            "vad": dataclasses.asdict(self.vad_config),
            "input_format": AudioFormat().as_dict(),
            "output_format": self.output_format.as_dict(),
        }

    async def start(self) -> bool:
        """Take the room's agent seat and announce the session; False (closed) when taken."""
        self._spawn(self._sender())
        try:
            self.tts = await voice_check(voice=None)
            await runtime.run_db(
                services.agent_session_start,
                session_id=str(self.id),
                room_name=self.room,
                fields={**self._record_fields(), "client_info": self.client_info},
            )
        except services.AgentBusy as busy:
            await self._send_now(ProtocolError("room_has_agent", str(busy), "room").frame())
            await self._close(CLOSE_ROOM_TAKEN, "room has a live agent")
            self.closed = True
            return False
        except ApiError as error:
            await self._send_now(ProtocolError(error.code, error.detail, error.field).frame())
            await self._close(CLOSE_POLICY, error.code)
            self.closed = True
            return False
        self.started = True
        self._spawn(self._writer(self.floor_ops), name="floor-writer")
        self._spawn(self._writer(self.record_ops), name="records-writer")
        self._spawn(self._heartbeat())
        self._spawn(self.stt.warm())
        self.emit({"type": "session.created", "session": self.session_info()})
        return True

    async def close(self, reason: str = "disconnect") -> None:
        """The socket is gone: stop speaking at once, finish every record."""
        if self.closed and not self.started:
            return
        self.closed = True
        if self.pending is not None:
            pending, self.pending = self.pending, None
            if pending.transcribing and pending.turn is not None:
                # No transcript will come: the user's stream and the exchange end here.
                self._finish_user_stream(pending.turn, "")
                fields = {
                    "ended_at": timezone.now(),
                    "error": "the client left before the transcript",
                }
                self._update_exchange(pending.record, fields)
            pending.task.cancel()
        if self.reply is not None and not self.reply.over:
            self._interrupt("disconnect", notify=False)
        if self.turn is not None:
            self._finish_user_stream(self.turn, "")
            self.turn = None
        # Every user stream still open (a turn being transcribed) is closed without its text.
        for turn in list(self.user_streams):
            self._finish_user_stream(turn, "")
        if self.started:
            self.record_ops.put_nowait(
                lambda: runtime.run_db(
                    services.agent_session_end, session_id=str(self.id), reason=reason
                )
            )
            self.record_ops.put_nowait(None)
            self.floor_ops.put_nowait(None)
        self.outbox.put_nowait(None)
        writers = {t.get_name(): t for t in self.tasks}
        # The records are complete before the close returns (database time only)...
        if "records-writer" in writers:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(writers["records-writer"]), timeout=10)
        # ...and the room gets the rest of the audio in the background: a floor wait is
        # bounded (FLOOR_WAIT_S, OWN_FLOOR_WAIT_S), never a reason to keep a socket.
        for task in list(self.tasks):
            if task.get_name() == "floor-writer":
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            else:
                task.cancel()

    def _spawn(self, coro: Awaitable[Any], name: str = "") -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("agent session %s: task failed: %r", self.id, error, exc_info=error)

    # --- outgoing frames, ordered ----------------------------------------------------------

    def emit(self, frame: Frame) -> None:
        if not self.closed:
            self.outbox.put_nowait(frame)

    async def _send_now(self, frame: Frame) -> None:
        with contextlib.suppress(Exception):
            await self._send_frame(frame)

    async def _sender(self) -> None:
        while (frame := await self.outbox.get()) is not None:
            try:
                await self._send_frame(frame)
            except Exception:  # the socket went away; close() follows
                return

    def refuse(self, error: ProtocolError) -> None:
        """An error frame, and a close once the client has been refused too often."""
        self.emit(error.frame())
        now = self.loop.time()
        self.errors.append(now)
        while self.errors and self.errors[0] < now - ERROR_WINDOW_S:
            self.errors.popleft()
        if len(self.errors) > ERROR_BUDGET and not self.closed and not self.closing:
            self.closing = True
            self._spawn(self._close(CLOSE_POLICY, "too many invalid frames"))

    # --- ordered database work ------------------------------------------------------------

    def db(self, fn: Callable[..., Any], **kwargs: Any) -> None:
        """Queue a record write; they run one after another, in the order queued."""
        self.record_ops.put_nowait(lambda: runtime.run_db(fn, **kwargs))

    async def _writer(self, ops: asyncio.Queue) -> None:
        while (op := await ops.get()) is not None:
            try:
                await op()
            except Exception as error:  # a record must not stop the conversation
                logger.warning("agent session %s: write failed: %r", self.id, error)

    async def _heartbeat(self) -> None:
        # Written directly, not queued: a write waiting for the floor must not make a live
        # session look dead.
        while True:
            await asyncio.sleep(services.HEARTBEAT_S)
            with contextlib.suppress(Exception):
                await runtime.run_db(services.agent_session_heartbeat, session_id=str(self.id))

    async def _ingest(self, *, done: bool = False, text: str = "", **chunk: Any) -> None:
        """A chunk into the core, in order; waits for the floor while it is held.

        The session's other side still playing in the room (a fast upload is played to
        spectators in real time) is waited for; another speaker of a shared room only
        FLOOR_WAIT_S, after which this utterance is not published in the room.
        """
        stream_id = chunk["stream_id"]
        if stream_id in self.off_floor:
            return
        waited = 0.0
        while True:
            try:
                await runtime.run_db(
                    services.speech_chunk, room_name=self.room, done=done, text=text, **chunk
                )
                return
            except ApiError as error:
                if error.code not in ("floor_held", "floor_busy"):
                    raise
                holder = (error.extra or {}).get("holder", "")
                own = holder in (self.user_speaker, self.agent_speaker)
                if waited > (OWN_FLOOR_WAIT_S if own else FLOOR_WAIT_S):
                    self.off_floor.add(stream_id)
                    logger.info(
                        "agent session %s: %s not published, %s holds the floor",
                        self.id,
                        stream_id,
                        holder,
                    )
                    return
                await asyncio.sleep(0.02)
                waited += 0.02

    def ingest(self, **chunk: Any) -> None:
        self.floor_ops.put_nowait(lambda: self._ingest(**chunk))

    def link_stream(self, record: ExchangeRecord, name: str, stream_id: str) -> None:
        """Once the room has the stream (floor writer), point the exchange at it."""

        async def link() -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(record.created.wait(), timeout=10)
            if record.pk is not None and stream_id not in self.off_floor:
                await runtime.run_db(
                    services.exchange_update, exchange_id=record.pk, fields={name: stream_id}
                )

        self.floor_ops.put_nowait(link)

    # --- client frames -----------------------------------------------------------------------

    async def receive_text(self, raw: str) -> None:
        if self.closed:
            return
        if len(raw) > settings.PARLEY_AGENT_MAX_FRAME_BYTES:
            self.refuse(self._too_large(len(raw)))
            return
        try:
            kind, body = parse_frame(raw)
            handler = getattr(self, "on_" + kind.replace(".", "_"))
            await handler(body)
        except ProtocolError as error:
            self.refuse(error)

    async def receive_bytes(self, data: bytes) -> None:
        if self.closed:
            return
        if len(data) > settings.PARLEY_AGENT_MAX_FRAME_BYTES:
            self.refuse(self._too_large(len(data)))
            return
        try:
            fmt = self._input_or_implicit("")
            check_frames(data, fmt)
            ready, _ = self.window.push(None, data)
            for piece in ready:
                self.feed(piece)
        except ProtocolError as error:
            self.refuse(error)

    def _too_large(self, size: int) -> ProtocolError:
        limit = settings.PARLEY_AGENT_MAX_FRAME_BYTES
        return ProtocolError(
            "frame_too_large",
            f"A frame may carry at most {limit} bytes, this one has {size}; send audio in "
            "20-40 ms chunks.",
            "audio",
        )

    async def on_session_update(self, body: Frame) -> None:
        changes: dict[str, Any] = {}
        unknown = set(body) - {
            "type",
            "voice",
            "instructions",
            "output_format",
            "vad",
            "turn_detection",
        }
        if unknown:
            name = sorted(unknown)[0]
            raise ProtocolError("unknown_field", f"session.update has no field {name!r}.", name)
        if "turn_detection" in body:
            mode = body["turn_detection"]
            if mode not in ("server_vad", "manual"):
                raise ProtocolError(
                    "invalid_turn_detection",
                    "turn_detection must be 'server_vad' or 'manual'.",
                    "turn_detection",
                )
            changes["turn_detection"] = mode
        if "vad" in body:
            try:
                changes["vad"] = VadConfig.from_dict(body["vad"], self.vad_config)
            except VadConfigError as error:
                raise ProtocolError("invalid_vad", error.reason, f"vad.{error.field}") from None
        if "output_format" in body:
            fmt = parse_format(body["output_format"], "output_format")
            if fmt.channels != 1:
                raise ProtocolError(
                    "unsupported_format",
                    "output_format.channels must be 1 (the agent speaks mono).",
                    "output_format.channels",
                )
            changes["output_format"] = fmt
        if "instructions" in body:
            text = body["instructions"]
            if text is not None:
                check_text(text, "instructions", limit=MAX_INSTRUCTIONS_CHARS)
            changes["instructions"] = text or ""
        if "voice" in body:
            voice = body["voice"]
            if voice is not None:
                check_text(voice, "voice", limit=128, empty=False)
            try:
                changes["tts"] = await voice_check(voice=voice)
            except ApiError as error:
                raise ProtocolError(error.code, error.detail, "voice") from None
            changes["voice"] = voice
        # All valid: apply at once.
        if "vad" in changes:
            self.vad_config = changes.pop("vad")
            self.detector.config = self.vad_config
        for name, value in changes.items():
            setattr(self, name, value)
        self.db(
            services.agent_session_update, session_id=str(self.id), fields=self._record_fields()
        )
        self.emit({"type": "session.updated", "session": self.session_info()})

    async def on_user_audio_start(self, body: Frame) -> None:
        uid = utterance_id(body)
        fmt = parse_format(body.get("format"))
        if self.client_utterance is not None:
            self._end_client_stream()
        self._open_client_stream(uid, fmt)
        if self.turn_detection == "manual":
            # Manual mode: the client says where the turn starts; talking is barging in.
            if self.reply is not None and self.reply.speaking(self.loop.time()):
                self._interrupt("client")
            self._cancel_pending()
            self._begin_turn(uid, self.detector.position_ms)

    async def on_user_audio_chunk(self, body: Frame) -> None:
        uid = body.get("utteranceId")
        fmt = self._input_or_implicit(uid if isinstance(uid, str) else "")
        chunk = parse_chunk(body, fmt)
        if chunk.utterance_id and chunk.utterance_id != self.client_utterance:
            raise ProtocolError(
                "unknown_utterance",
                f"utteranceId {chunk.utterance_id!r} is not the open utterance "
                f"({self.client_utterance!r}); send user.audio.start first.",
                "utteranceId",
            )
        ready, gap = self.window.push(chunk.sequence, chunk.audio)
        for piece in ready:
            self.feed(piece)
        if gap is not None:
            raise ProtocolError(
                "sequence_gap",
                f"sequence {chunk.sequence} is more than {self.window.window} chunks ahead: "
                f"{gap[2]} chunk(s) from {gap[0]} to {gap[1]} are taken as lost and the "
                "utterance goes on.",
                "sequence",
            )

    async def on_user_audio_end(self, body: Frame) -> None:
        uid = utterance_id(body, required=False)
        if self.client_utterance is None:
            raise ProtocolError(
                "no_open_utterance", "There is no open utterance to end.", "utteranceId"
            )
        if uid is not None and uid != self.client_utterance:
            raise ProtocolError(
                "unknown_utterance",
                f"utteranceId {uid!r} is not the open utterance ({self.client_utterance!r}).",
                "utteranceId",
            )
        self._end_client_stream()

    async def on_agent_interrupt(self, body: Frame) -> None:
        self._cancel_pending()
        if self.reply is not None and self.reply.speaking(self.loop.time()):
            self._interrupt("client")

    async def on_text_input(self, body: Frame) -> None:
        text = check_text(body.get("text"), "text", limit=MAX_TEXT_CHARS, empty=False)
        now = self.loop.time()
        self.text_credit = min(
            TEXT_BURST, self.text_credit + (now - self.text_credit_at) / TEXT_REFILL_S
        )
        self.text_credit_at = now
        if self.text_credit < 1:
            raise ProtocolError(
                "rate_limited",
                f"Typed turns come faster than one per {TEXT_REFILL_S:.0f} s (after a burst of "
                f"{TEXT_BURST}): this one was dropped.",
                "text",
            )
        self.text_credit -= 1
        if self.reply is not None and self.reply.speaking(self.loop.time()):
            self._interrupt("client")
        self._cancel_pending()
        self.exchanges += 1
        index = self.exchanges
        uid = f"text-{index}"
        stream_id = f"user-{self.id.hex}-{index}"
        # A typed turn is a user utterance without audio (the core's no-audio mode), in order
        # with the spoken ones.
        typed = UserTurn(
            utterance_id=uid,
            stream_id=stream_id,
            onset_ms=self.detector.position_ms,
            started_at=now,
            index=index,
        )
        # The typed turn is the user's final transcript, so every client reads turns alike.
        self.emit({"type": "transcript.final", "utteranceId": uid, "text": text.strip()})
        typed.record = self._start_exchange(
            index, uid, source="text", end_at=self.loop.time(), text=text.strip()
        )
        self._finish_user_stream(typed, text.strip())

    # --- input audio -------------------------------------------------------------------------

    def _input_or_implicit(self, uid: str) -> AudioFormat:
        if self.input_format is not None:
            return self.input_format
        if self.turn_detection == "manual":
            raise ProtocolError(
                "no_open_utterance",
                "Send user.audio.start before audio (turn_detection is manual).",
                "utteranceId",
            )
        # Server VAD: a client may just stream microphone audio in the default format.
        self._open_client_stream(
            uid or f"mic-{uuid.uuid4().hex[:8]}", AudioFormat(), uid_given=False
        )
        return self.input_format  # type: ignore[return-value]

    def _open_client_stream(self, uid: str, fmt: AudioFormat, *, uid_given: bool = True) -> None:
        self.client_utterance = uid
        self.client_turns = 0
        self.input_format = fmt
        # Sequences count from 0 per utterance; a microphone streamed without a start takes
        # its first number as given.
        self.window = SequenceWindow(first=0 if uid_given else None)
        self.resampler = (
            None
            if fmt.sample_rate_hz == RATE
            else soxr.ResampleStream(fmt.sample_rate_hz, RATE, 1, dtype="int16", quality="HQ")
        )

    def _end_client_stream(self) -> None:
        for piece in self.window.skip_gap():
            self.feed(piece)
        if self.resampler is not None:
            tail = self.resampler.resample_chunk(np.zeros(0, dtype=np.int16), last=True)
            self._frames(tail.tobytes())
        if self.turn is not None:
            # What is left of a frame is audio too.
            self.turn.pcm += self.frame_buf
            self.frame_buf.clear()
            self._end_turn("client")
        self.frame_buf.clear()
        self.client_utterance = None
        self.input_format = None
        self.resampler = None

    def _take_credit(self, seconds: float) -> bool:
        now = self.loop.time()
        self.audio_credit = min(
            AUDIO_BURST_S, self.audio_credit + (now - self.credit_at) * AUDIO_REFILL
        )
        self.credit_at = now
        if seconds > self.audio_credit:
            return False
        self.audio_credit -= seconds
        return True

    def feed(self, data: bytes) -> None:
        """Audio of the open client stream, in its format and order."""
        fmt = self.input_format
        assert fmt is not None
        if not self._take_credit(len(data) / fmt.bytes_per_second):
            raise ProtocolError(
                "rate_limited",
                f"Audio is arriving much faster than real time (burst {AUDIO_BURST_S:.0f} s, "
                f"then {AUDIO_REFILL:.0f}x): this chunk was dropped.",
                "audio",
            )
        samples = np.frombuffer(data, dtype="<i2")
        if fmt.channels == 2:
            samples = samples.reshape(-1, 2).mean(axis=1).astype(np.int16)
        if self.resampler is not None:
            samples = self.resampler.resample_chunk(samples)
        self._frames(samples.astype("<i2").tobytes())

    def _frames(self, pcm: bytes) -> None:
        self.frame_buf += pcm
        while len(self.frame_buf) >= FRAME_BYTES:
            frame = bytes(self.frame_buf[:FRAME_BYTES])
            del self.frame_buf[:FRAME_BYTES]
            self._on_frame(frame)

    def _on_frame(self, frame: bytes) -> None:
        (prob,) = self.vad.feed(frame)
        event = self.detector.push(prob)
        now = self.loop.time()
        detector = self.detector
        turn = self.turn
        if turn is None:
            self.preroll.append(frame)
            # The padding before an onset, plus the speech a barge-in must hold: bounded
            # whatever the VAD sees while no turn is open.
            held = min(detector.speech_ms, self.vad_config.barge_in_ms + 256)
            keep = max(1, self.vad_config.prefix_padding_ms // 32 + 1) + held // 32
            while len(self.preroll) > keep:
                self.preroll.popleft()
            if self.turn_detection != "server_vad" or detector.onset_ms is None:
                return
            agent_busy = (self.reply is not None and self.reply.speaking(now)) or (
                self.pending is not None
            )
            if agent_busy:
                # Barge-in: the user's speech must be held a minimum, so a cough or an
                # "uh-huh" does not cut the agent off.
                # Held to the nearest frame (6 frames, 192 ms, for 200 ms), counted from
                # where the speech probability began to rise (the model lags the voice).
                if detector.held_ms >= self.vad_config.barge_in_ms - FRAME_MS // 2:
                    if self.reply is not None and self.reply.speaking(now):
                        self._interrupt("vad")
                    self._cancel_pending()
                    self._begin_vad_turn()
            elif detector.speaking:
                self._begin_vad_turn()
            return
        turn.pcm += frame
        if prob >= self.vad_config.threshold:
            turn.last_speech_byte = len(turn.pcm)
            turn.speech_end_at = now
        self._to_core(turn)
        stopped = event is not None and event.kind == "speech_stopped"
        if self.turn_detection == "server_vad" and stopped:
            self.emit(
                {
                    "type": "user.speech.stopped",
                    "utteranceId": turn.utterance_id,
                    "audio_end_ms": event.offset_ms,
                }
            )
            self._end_turn("vad")
            return
        if len(turn.pcm) >= self.max_turn_bytes:
            self._end_turn("max_length")
            if self.turn_detection == "manual" and self.client_utterance is not None:
                # The client's utterance goes on: so does the user's speech, as a new turn.
                self.client_turns += 1
                base = self.client_utterance
                self._cancel_pending()  # its words are answered with the rest
                self._begin_turn(f"{base}-{self.client_turns + 1}", self.detector.position_ms)
            return
        self._speculate(turn)

    def _begin_vad_turn(self) -> None:
        self.client_turns += 1
        base = self.client_utterance or "mic"
        uid = base if self.client_turns == 1 else f"{base}-{self.client_turns}"
        onset = self.detector.onset_ms
        if onset is None:
            onset = self.detector.position_ms
        self._begin_turn(uid, onset)
        turn = self.turn
        assert turn is not None
        for frame in self.preroll:
            turn.pcm += frame
        turn.last_speech_byte = len(turn.pcm)
        turn.speech_end_at = self.loop.time()
        self.preroll.clear()
        self._to_core(turn)

    def _begin_turn(self, uid: str, onset_ms: int) -> None:
        self.exchanges += 1
        self.turn = UserTurn(
            utterance_id=uid,
            stream_id=f"user-{self.id.hex}-{self.exchanges}",
            onset_ms=onset_ms,
            started_at=self.loop.time(),
            index=self.exchanges,
        )
        self.emit({"type": "user.speech.started", "utteranceId": uid, "audio_start_ms": onset_ms})

    def _to_core(self, turn: UserTurn) -> None:
        """Queue the turn's new audio for the room, in 100 ms chunks.

        The user's streams reach the room one after another: a turn's audio waits here (it
        is in ``turn.pcm`` anyway) until every earlier user stream has its final chunk, or
        the room would refuse it as a second stream of the same speaker's turn.
        """
        if turn not in self.user_streams:
            self.user_streams.append(turn)
        if self.user_streams[0] is not turn:
            return
        piece = RATE * 2 * CORE_CHUNK_MS // 1000
        final = turn.finished
        while len(turn.pcm) - turn.core_sent >= piece or (final and len(turn.pcm) > turn.core_sent):
            data = bytes(turn.pcm[turn.core_sent : turn.core_sent + piece])
            turn.core_sent += len(data)
            self.ingest(
                speaker=self.user_speaker,
                stream_id=turn.stream_id,
                seq=turn.core_seq,
                data=data,
                sample_rate_hz=RATE,
            )
            turn.core_seq += 1
        if not final:
            return
        self.ingest(
            speaker=self.user_speaker,
            stream_id=turn.stream_id,
            seq=turn.core_seq,
            data=b"",
            sample_rate_hz=RATE,
            done=True,
            text=turn.text,
        )
        if turn.record is not None:
            self.link_stream(turn.record, "user_stream", turn.stream_id)
        self.user_streams.popleft()
        if self.user_streams:  # the next one was waiting for this one
            self._to_core(self.user_streams[0])

    def _finish_user_stream(self, turn: UserTurn, text: str) -> None:
        """The turn's stream is complete, with its transcript (sent when its turn comes)."""
        if turn.finished:
            return
        turn.finished = True
        turn.text = text
        self._to_core(turn)

    def _speculate(self, turn: UserTurn) -> None:
        """Transcribe while the user pauses (and now and then while they talk)."""
        silence = len(turn.pcm) - turn.last_speech_byte
        if (
            silence >= RATE * 2 * SPECULATE_AFTER_MS // 1000
            and turn.spec_len < turn.last_speech_byte
        ):
            # The user paused: what they said so far is likely the whole turn. Transcribe it
            # now, so the end of turn finds the transcript in hand.
            if turn.spec_task is not None:
                turn.spec_task.cancel()
            turn.spec_len = len(turn.pcm)
            turn.spec_task = self._spawn(_transcribe(self.stt, bytes(turn.pcm)))
            return
        if (
            _stt_inflight == 0
            and len(turn.pcm) >= RATE * 2 * PARTIAL_AFTER_MS // 1000
            and silence == 0  # mid-speech: the turn is not about to end
            and len(turn.pcm) - turn.partial_len >= RATE * 2 * PARTIAL_EVERY_MS // 1000
            and (turn.partial_task is None or turn.partial_task.done())
        ):
            turn.partial_len = len(turn.pcm)
            turn.partial_task = self._spawn(self._partial(turn, bytes(turn.pcm)))

    async def _partial(self, turn: UserTurn, pcm: bytes) -> None:
        try:
            text, _ = await _transcribe(self.stt, pcm)
        except SttError:
            return
        if text and self.turn is turn:
            self.emit(
                {"type": "transcript.partial", "utteranceId": turn.utterance_id, "text": text}
            )

    def _end_turn(self, reason: str) -> None:
        turn = self.turn
        assert turn is not None
        self.turn = None
        now = self.loop.time()
        if turn.partial_task is not None:
            turn.partial_task.cancel()
        spec = None
        if turn.spec_task is not None and turn.spec_len >= turn.last_speech_byte:
            spec = turn.spec_task  # no speech since the speculative snapshot: it is final
        elif turn.spec_task is not None:
            turn.spec_task.cancel()
        vad_wait = (
            _ms(now - turn.speech_end_at)
            if reason == "vad" and turn.speech_end_at is not None
            else None
        )
        turn.record = self._start_exchange(
            turn.index,
            turn.utterance_id,
            source="audio",
            end_at=now,
            turn=turn,
            spec=spec,
            metrics={"end_of_turn": reason, "vad_wait_ms": vad_wait},
        )

    # --- exchanges ---------------------------------------------------------------------------

    def _forget(self, state: Pending) -> None:
        if self.pending is state:
            self.pending = None

    def _cancel_pending(self) -> None:
        pending, self.pending = self.pending, None
        if pending is None or pending.task.done():
            return
        if pending.transcribing:
            pending.superseded = True
            self.carry_from = pending
        else:
            pending.task.cancel()

    def _start_exchange(
        self,
        index: int,
        uid: str,
        *,
        source: str,
        end_at: float,
        text: str = "",
        turn: UserTurn | None = None,
        spec: asyncio.Task | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> ExchangeRecord:
        record = ExchangeRecord()
        fields = {"source": source, "user_utterance_id": uid[:128]}
        self.record_ops.put_nowait(lambda: self._create_exchange(record, index, fields))
        carry, self.carry_from = self.carry_from, None
        state = Pending(task=None, turn=turn, record=record)  # type: ignore[arg-type]
        steps = self._exchange_steps(
            state, index, uid, source, end_at, text, carry, spec, dict(metrics or {})
        )
        state.task = self._spawn(self._exchange(state, steps))
        self.pending = state
        return record

    async def _exchange(self, state: Pending, steps: Awaitable[None]) -> None:
        """Run an exchange's steps; whatever happens, its transcript future is resolved."""
        try:
            await steps
        finally:
            if not state.transcript.done():
                state.transcript.set_result("")

    async def _exchange_steps(
        self,
        state: Pending,
        index: int,
        uid: str,
        source: str,
        end_at: float,
        text: str,
        carry: Pending | None,
        spec: asyncio.Task | None,
        metrics: dict[str, Any],
    ) -> None:
        turn, record = state.turn, state.record
        metrics.update(stt_speculative=False, stt_ms=0, stt_compute_ms=0)
        carried, self.carry_text = self.carry_text, ""
        final_sent = False
        try:
            if carry is not None:
                # Words of a turn the user went on from: answered together with this one.
                earlier = await asyncio.shield(carry.transcript)
                carried = f"{carried} {earlier}".strip()
            if turn is not None:
                if spec is not None:
                    metrics["stt_speculative"] = True
                    text, compute = await spec
                else:
                    text, compute = await _transcribe(self.stt, bytes(turn.pcm))
                metrics["stt_ms"] = _ms(self.loop.time() - end_at)
                metrics["stt_compute_ms"] = _ms(compute)
                self.emit({"type": "transcript.final", "utteranceId": uid, "text": text})
                final_sent = True
                self._finish_user_stream(turn, text)
            text = f"{carried} {text}".strip() if carried else text
            state.transcribing = False
        except asyncio.CancelledError:
            if turn is not None and not final_sent:
                self._finish_user_stream(turn, "")
            raise
        except SttError as error:
            self.emit(
                {
                    "type": "error",
                    "code": getattr(error, "code", "stt_failed"),
                    "detail": str(error),
                }
            )
            if turn is not None:
                self._finish_user_stream(turn, "")
            state.transcript.set_result(carried)
            self._update_exchange(record, {"ended_at": timezone.now(), "error": str(error)[:255]})
            self._forget(state)
            return
        if state.superseded:
            # The user went on talking: the next exchange answers this turn's words too.
            state.transcript.set_result(text)
            fields = {"transcript": text, "ended_at": timezone.now(), "error": "superseded"}
            self._update_exchange(record, fields)
            return
        self._update_exchange(record, {"transcript": text})
        if not text:
            self._update_exchange(record, {"ended_at": timezone.now()})
            self._forget(state)
            return  # nothing was said (a noise): no reply
        reply = Reply(
            utterance_id=f"reply-{index}",
            stream_id=f"agent-{self.id.hex}-{index}",
            record=record,
            user_text=text,
            user_utterance_id=uid,
            end_of_turn_at=end_at,
            playout=Playout(
                bytes_per_second=self.output_format.bytes_per_second,
                lead_s=settings.PARLEY_AGENT_LEAD_MS / 1000,
            ),
            metrics=metrics,
            fmt=self.output_format,
            voice=self.voice,
        )
        previous = self.reply
        if previous is not None and previous.speaking(self.loop.time()):
            # Never two replies at once: the newer turn's answer cuts the older one off.
            self._interrupt("user")
        self.reply = reply
        reply.task = asyncio.current_task()
        self._update_exchange(record, {"reply_utterance_id": reply.utterance_id})
        try:
            await self._speak(reply)
        except asyncio.CancelledError:
            if not reply.over:  # cancelled before it was heard (the user went on talking)
                self.carry_text = text if not reply.playout.sent_bytes else ""
                self._interrupt("user", notify=bool(reply.playout.sent_bytes))
            raise
        except (ApiError, responders.ResponderError, Exception) as error:
            logger.warning("agent session %s: reply failed: %r", self.id, error)
            code = getattr(error, "code", "reply_failed")
            self.emit(
                {
                    "type": "error",
                    "code": code,
                    "detail": getattr(error, "detail", str(error)),
                }
            )
            reply.over = True
            self._record_reply(reply, error=f"{code}: {error}"[:255])
            self._forget(state)

    async def _create_exchange(
        self, record: ExchangeRecord, index: int, fields: dict[str, Any]
    ) -> None:
        try:
            record.pk = await runtime.run_db(
                services.exchange_create, session_id=str(self.id), index=index, fields=fields
            )
        finally:
            record.created.set()

    def _update_exchange(self, record: ExchangeRecord, fields: dict[str, Any]) -> None:
        async def write() -> None:
            if record.pk is not None:
                await runtime.run_db(services.exchange_update, exchange_id=record.pk, fields=fields)

        self.record_ops.put_nowait(write)

    async def _speak(self, reply: Reply) -> None:
        """Responder → sentences → TTS → paced agent.audio.chunk frames."""
        history = _recent(self.history, HISTORY_CHARS)
        stream = await responders.open_stream(
            reply.user_text,
            user=self.user_speaker,
            history=history,
            instructions=self.instructions or None,
            chain=self.chain,
        )
        reply.responder = stream.provider
        sentences: asyncio.Queue[tuple[int, int] | None] = asyncio.Queue()
        splitter = SentenceSplitter()

        async def produce() -> None:
            async with contextlib.aclosing(stream):
                async for delta in stream:
                    if "first_token_ms" not in reply.metrics:
                        reply.metrics["first_token_ms"] = _ms(
                            self.loop.time() - reply.end_of_turn_at
                        )
                    reply.text = splitter.text + delta
                    self.emit(
                        {
                            "type": "agent.text.delta",
                            "utteranceId": reply.utterance_id,
                            "text": delta,
                        }
                    )
                    for span in splitter.push(delta):
                        sentences.put_nowait(span)
            for span in splitter.flush():
                sentences.put_nowait(span)
            reply.text = splitter.text
            self.emit(
                {"type": "agent.text.done", "utteranceId": reply.utterance_id, "text": reply.text}
            )
            sentences.put_nowait(None)

        producer = asyncio.ensure_future(produce())
        try:
            while (span := await sentences.get()) is not None:
                await self._speak_sentence(reply, span)
            await producer
        finally:
            if not producer.done():
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer
        reply.sending_done = True
        if self.pending is not None and self.pending.task is reply.task:
            self.pending = None
        duration_ms = _ms(reply.playout.duration_s)
        self.emit(
            {
                "type": "agent.audio.end",
                "utteranceId": reply.utterance_id,
                "duration_ms": duration_ms,
            }
        )
        # The whole reply is on the floor: its text goes with the last chunk, and the core's
        # clock releases the turn when playback ends.
        self.ingest(
            speaker=self.agent_speaker,
            stream_id=reply.stream_id,
            seq=reply.core_seq,
            data=b"",
            sample_rate_hz=reply.fmt.sample_rate_hz,
            done=True,
            text=reply.text,
        )
        reply.core_seq += 1
        self.link_stream(reply.record, "agent_stream", reply.stream_id)
        self.history.append(responders.Turn(text=reply.user_text, response=reply.text))
        del self.history[:-HISTORY_TURNS]
        self._spawn(self._played(reply))

    async def _played(self, reply: Reply) -> None:
        """Once the listener has heard it all (unless cut), the reply is over."""
        ends = reply.playout.playhead or self.loop.time()
        await asyncio.sleep(max(0.0, ends - self.loop.time()))
        if reply.over:
            return
        reply.over = True
        heard_ms, heard = reply.heard(ends + 1)
        reply.metrics.update(interrupted=False, heard_ms=heard_ms)
        self._record_reply(reply, heard_ms=heard_ms, heard_text=heard)

    async def _speak_sentence(self, reply: Reply, span: tuple[int, int]) -> None:
        start, end = span
        sentence = reply.text[start:end] if end <= len(reply.text) else ""
        if not sentence.strip():
            return
        piece = reply.fmt.bytes_per_second * AGENT_CHUNK_MS // 1000
        audio_start = reply.produced
        words: list[tuple[int, int]] = []
        reply.current = SpokenSpan(start, end, audio_start, audio_start)
        chunks = synthesis_stream(
            text=sentence,
            model=None,
            voice=reply.voice,
            sample_rate=reply.fmt.sample_rate_hz,
            job_kind="agent",
            endpoint="/ws/agent",
        )
        buffer = bytearray()
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                for mark in chunk.marks:
                    if mark.kind == "word":
                        words.append((start + mark.text_offset, audio_start + mark.audio_offset))
                buffer += chunk.pcm
                reply.produced += len(chunk.pcm)
                reply.current = SpokenSpan(start, end, audio_start, reply.produced, tuple(words))
                while len(buffer) >= piece:
                    await self._send_audio(reply, bytes(buffer[:piece]))
                    del buffer[:piece]
        if buffer:
            await self._send_audio(reply, bytes(buffer))
        reply.spans.append(SpokenSpan(start, end, audio_start, reply.produced, tuple(words)))
        reply.current = None

    async def _send_audio(self, reply: Reply, pcm: bytes) -> None:
        wait = reply.playout.wait_s(self.loop.time())
        if wait > 0:
            await asyncio.sleep(wait)
        if reply.over or self.closed:
            raise asyncio.CancelledError
        now = self.loop.time()
        offset_ms = _ms(reply.playout.duration_s)
        reply.playout.sent(len(pcm), now)
        if "first_audio_ms" not in reply.metrics:
            reply.metrics["first_audio_ms"] = _ms(now - reply.end_of_turn_at)
            reply.metrics["reply_latency_ms"] = reply.metrics["first_audio_ms"]
        self.emit(
            {
                "type": "agent.audio.chunk",
                "utteranceId": reply.utterance_id,
                "sequence": reply.seq,
                "timestamp": offset_ms,
                "audio": _b64(pcm),
            }
        )
        reply.seq += 1
        self.ingest(
            speaker=self.agent_speaker,
            stream_id=reply.stream_id,
            seq=reply.core_seq,
            data=pcm,
            sample_rate_hz=reply.fmt.sample_rate_hz,
        )
        reply.core_seq += 1

    def _interrupt(self, by: str, *, notify: bool = True) -> None:
        """Barge-in: not one more byte of this reply goes out; say what was heard."""
        reply = self.reply
        if reply is None or reply.over:
            return
        now = self.loop.time()
        reply.over = True  # checked before every send: nothing of this reply follows
        current = asyncio.current_task()
        if reply.task is not None and reply.task is not current and not reply.task.done():
            reply.task.cancel()
        if self.pending is not None and self.pending.task is reply.task:
            self.pending = None
        heard_ms, heard = reply.heard(now)
        if notify:
            self.emit(
                {
                    "type": "agent.interrupt",
                    "utteranceId": reply.utterance_id,
                    "heard_ms": heard_ms,
                    "heard_text": heard,
                }
            )
        # The conversation keeps only what the listener heard, marked as cut off.
        if reply.sending_done and self.history:
            self.history.pop()  # the whole reply was recorded when its audio was all sent
        self.history.append(responders.Turn(text=reply.user_text, response=heard, interrupted=True))
        reply.metrics.update(interrupted=True, interrupted_by=by, heard_ms=heard_ms)
        if reply.playout.sent_bytes:
            # After the reply's chunks on the floor writer, so the room cuts what it has.
            cut = functools.partial(
                runtime.run_db,
                services.agent_cut,
                room_name=self.room,
                speaker=self.agent_speaker,
                heard_text=heard,
                heard_ms=heard_ms,
                script=reply.text,
                reason="barge_in" if by in ("vad", "client", "user") else by,
            )
            if reply.stream_id not in self.off_floor:
                self.floor_ops.put_nowait(cut)
            self.link_stream(reply.record, "agent_stream", reply.stream_id)
        self._record_reply(reply, heard_ms=heard_ms, heard_text=heard, interrupted_by=by)

    def _record_reply(
        self,
        reply: Reply,
        *,
        heard_ms: int | None = None,
        heard_text: str = "",
        interrupted_by: str = "",
        error: str = "",
    ) -> None:
        metrics = {
            "type": "turn.metrics",
            "utteranceId": reply.user_utterance_id,
            "reply_utteranceId": reply.utterance_id,
            "responder": reply.responder,
            "stt": self.stt.name,
            "tts": self.tts.get("engine", ""),
            "duration_ms": _ms(reply.playout.duration_s),
            **reply.metrics,
        }
        metrics.setdefault("heard_ms", heard_ms)
        self.emit(metrics)
        fields = {
            "reply_text": reply.text,
            "heard_text": heard_text,
            "heard_ms": heard_ms,
            "duration_ms": metrics["duration_ms"],
            "interrupted": bool(interrupted_by),
            "interrupted_by": interrupted_by,
            "responder": reply.responder[:128],
            "error": error,
            "metrics": {k: v for k, v in metrics.items() if k != "type"},
        }

        fields["ended_at"] = timezone.now()
        self._update_exchange(reply.record, fields)


def _recent(history: list[responders.Turn], budget: int) -> list[responders.Turn]:
    """The newest turns whose text fits in ``budget`` characters, oldest first.

    A reply's cost stays bounded however long the conversation (OpenAI Realtime truncates
    its oldest items the same way); the instructions are not counted.
    """
    kept: list[responders.Turn] = []
    used = 0
    for turn in reversed(history):
        used += len(turn.text) + len(turn.response)
        if used > budget:
            break
        kept.append(turn)
    return kept[::-1]
