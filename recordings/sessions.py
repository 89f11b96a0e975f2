"""One connection's recording, whatever carries it: the seed's events over a transport.

The Socket.IO namespace and the plain WebSocket consumer are thin: they turn frames into
`RecordingSession.open / handle / disconnect` calls and give it two callables, `send(event,
data)` and `close()`. Everything else (validation, limits, the idle timeout, what is sent
back) happens here, on top of the services.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import close_old_connections

from recordings import services
from recordings.commit import Pending, group_commit
from recordings.formats import RecordingFormat, parse_format
from recordings.live import LiveDecoder, live_command
from recordings.models import Recording, RecordingStatus, Transport
from recordings.selectors import api_keys_valid, result_file_path_payload
from streams.audio import BYTES_PER_SAMPLE_RANGE, CHANNEL_CHOICES, SAMPLE_RATE_RANGE, FormatError
from streams.auth import authenticate, bearer_token, hash_key, require_writer, resolve_speaker
from streams.errors import ApiError
from streams.params import parse_int
from streams.runtime import runtime

logger = logging.getLogger(__name__)
T = TypeVar("T")

SendFn = Callable[[str, dict[str, Any]], Awaitable[None]]
CloseFn = Callable[[], Awaitable[None]]

DEFAULT_SPEAKER = "recorder"
CONNECTED = {"message": "Connected to server"}
RECEIVED = {"message": "received chunk"}
# Answers a session may owe (chunks sent, not yet acknowledged) before it stops reading the
# client's next event: memory stays bounded, and the client feels it as a slower socket.
MAX_OWED = 128


async def run_blocking(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Slow work (file building, ffmpeg) on the default pool, not the runtime's DB executor:
    a minute-long decode must not hold up other sessions' chunk writes."""

    def call() -> T:
        try:
            return fn(**kwargs)
        finally:
            close_old_connections()

    return await asyncio.get_running_loop().run_in_executor(None, call)


def scope_params(scope: Mapping[str, Any]) -> dict[str, str]:
    query = scope.get("query_string", b"").decode("latin-1")
    return dict(parse_qsl(query, keep_blank_values=True))


def _header(scope: Mapping[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def scope_base_url(scope: Mapping[str, Any]) -> str:
    """http(s)://host as the client reached us (the seed's file_url starts with it)."""
    scheme = scope.get("scheme", "http")
    forwarded = _header(scope, b"x-forwarded-proto")
    if forwarded and getattr(settings, "SECURE_PROXY_SSL_HEADER", None):
        scheme = forwarded.split(",", 1)[0].strip()
    secure = scheme in ("https", "wss")
    host = _header(scope, b"host")
    if not host:
        server = scope.get("server") or ("localhost", None)
        host = server[0] if server[1] in (None, 80, 443) else f"{server[0]}:{server[1]}"
    return f"{'https' if secure else 'http'}://{host}"


def _authorization(scope: Mapping[str, Any], params: Mapping[str, Any]) -> str | None:
    api_key = params.get("api_key")
    if isinstance(api_key, str) and api_key:
        return f"Bearer {api_key}"
    return _header(scope, b"authorization")


# The handshake's numbers and their ranges (streams.audio's, which parse_format applies).
FORMAT_NUMBERS = {
    "sample_rate_hz": SAMPLE_RATE_RANGE,
    "channels": (CHANNEL_CHOICES[0], CHANNEL_CHOICES[-1]),
    "bytes_per_sample": BYTES_PER_SAMPLE_RANGE,
}


def format_numbers(params: Mapping[str, Any]) -> dict[str, Any]:
    """`params` with its format numbers read by streams.params: text or JSON (`16000`,
    `"16000"`, `16000.0`), bounded before conversion. Raises ApiError `invalid_<field>`."""
    numbers = {
        name: parse_int(params[name], field=name, minimum=low, maximum=high, text=True)
        for name, (low, high) in FORMAT_NUMBERS.items()
        if params.get(name) not in (None, "")
    }
    return {**params, **numbers}


def _optional_str(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ApiError(f"invalid_{name}", f"{name} must be a string.", field=name)
    return value


def _chunk_bytes(data: Any) -> bytes:
    """The seed sends {"chunk": <binary>}; a bare binary payload is accepted too."""
    chunk = data.get("chunk") if isinstance(data, dict) else data
    if isinstance(chunk, bytearray | memoryview):
        chunk = bytes(chunk)
    if not isinstance(chunk, bytes):
        raise ApiError(
            "invalid_chunk",
            'audio_chunk takes {"chunk": <binary>}: the chunk must be binary data, '
            f"not {type(chunk).__name__}.",
            field="chunk",
        )
    return chunk


class RecordingSession:
    def __init__(
        self, *, sid: str, transport: str, send: SendFn, close: CloseFn, channel_name: str = ""
    ) -> None:
        self.sid = sid
        self.transport = transport
        self.channel_name = channel_name
        self._send = send
        self._close = close
        self.recording_id: int | None = None
        self._last_activity = 0.0
        self._idle_task: asyncio.Task | None = None
        self._ended = False
        # A container recording with a room: its live stream and decoder (started by the
        # first chunk), and the channel a force stop on any worker tells this session on.
        self._live_stream_pk: int | None = None
        self._live_fmt: RecordingFormat | None = None
        self._live: LiveDecoder | None = None
        self._listen_task: asyncio.Task | None = None
        # Answers owed to the client, in the order its events came: a chunk waiting for its
        # group commit (Pending), or a refusal already known (ApiError). One task sends them.
        self._owed: deque[Pending | ApiError] = deque()
        self._answerable = asyncio.Event()  # the oldest owed answer may be ready
        self._drained = asyncio.Event()  # nothing owed
        self._drained.set()
        self._room = asyncio.Event()  # fewer than MAX_OWED owed
        self._room.set()
        self._answerer: asyncio.Task | None = None
        self._gone = False  # a send failed: the client is gone, answers are dropped

    # --- lifecycle ---------------------------------------------------------------------

    async def open(self, *, scope: Mapping[str, Any], params: Mapping[str, Any]) -> dict:
        """Validate what the client declared and allocate the recording.

        Returns the `response` payload (the seed's message plus `streaming_id` and the
        `streaming_key` that force_stop takes); raises ApiError to refuse the connection.
        """
        try:
            fmt = parse_format(format_numbers(params))
        except FormatError as exc:
            raise ApiError(f"invalid_{exc.field}", exc.detail, field=exc.field) from exc
        room = _optional_str(params, "room")
        requested_speaker = _optional_str(params, "speaker")
        authorization = _authorization(scope, params)
        principal = await runtime.run_db(authenticate, authorization) if authorization else None
        require_writer(principal)
        speaker = resolve_speaker(principal, requested_speaker, DEFAULT_SPEAKER)
        api_key = bearer_token(authorization) if principal is not None else None
        live = room is not None and not fmt.is_pcm
        layer = get_channel_layer() if live and not self.channel_name else None
        if layer is not None:
            # Socket.IO has no channel of its own: a force stop elsewhere reaches the decoder
            # through this one (the plain WebSocket's consumer channel does it there).
            self.channel_name = await layer.new_channel()
        recording, key = await runtime.run_db(
            services.recording_open,
            sid=self.sid,
            transport=self.transport,
            fmt=fmt,
            base_url=scope_base_url(scope),
            speaker=speaker,
            room_name=room,
            channel_name=self.channel_name,
        )
        self.recording_id = recording.pk
        if live:
            self._live_stream_pk = recording.live_stream_id
            self._live_fmt = fmt
        loop = asyncio.get_running_loop()
        if layer is not None:
            self._listen_task = loop.create_task(self._listen(layer))
        self._touch()
        self._idle_task = loop.create_task(self._watch_idle())
        if api_key is not None:
            key_watch.add(self, hash_key(api_key))
        return {**CONNECTED, "streaming_id": self.sid, "streaming_key": key}

    async def handle(self, event: str, data: Any) -> None:
        """One client event. Every refusal becomes an `error` event; nothing raises.

        A chunk is handed to the group commit and this returns at once (the next event is
        read while it commits); its answer, like every answer, is sent in the order the
        events came. Any other event first waits for the answers owed before it."""
        self._touch()
        if event == "audio_chunk" and self.recording_id is not None:
            self._take_chunk(data)
            while len(self._owed) >= MAX_OWED:
                self._room.clear()
                await self._room.wait()
            return
        await self._drain()
        try:
            if self.recording_id is None:
                raise ApiError("not_connected", "The session was refused at connect.")
            if event == "stop_recording":
                await self._stop()
            else:
                raise ApiError(
                    "unknown_event",
                    f"Unknown event {event!r}; send audio_chunk or stop_recording.",
                    field="event",
                )
        except ApiError as exc:
            await self._send("error", exc.as_dict())
        except StopConsumer:
            raise  # the transport is gone (a send to a closed socket): nothing failed here
        except Exception:
            logger.exception("recording %s: %s failed", self.sid, event)
            await self._send(
                "error", ApiError("internal_error", f"{event} failed on the server.").as_dict()
            )

    async def disconnect(self) -> None:
        """The client left: save whatever it recorded (the seed's process_audio)."""
        self._stop_watching()
        if self.recording_id is None or self._ended:
            self._stop_answering()
            return
        self._ended = True
        try:
            await self._drain()  # what was sent before the client left is stored
            self._stop_answering()
            if await self._discard_if_empty():
                return
            await self._finish_live()
            await run_blocking(
                services.recording_stop, recording_id=self.recording_id, refuse_empty=False
            )
        except ApiError as exc:
            # Heard only by a client still on the connection (it left the namespace alone).
            await self._send_quietly("error", exc.as_dict())
        except Exception:
            logger.exception("recording %s: saving on disconnect failed", self.sid)

    # --- events ----------------------------------------------------------------------------

    def _take_chunk(self, data: Any) -> None:
        try:
            chunk = _chunk_bytes(data)
            services.check_chunk_size(chunk)
        except ApiError as refused:
            self._owe(refused)
            return
        assert self.recording_id is not None
        self._owe(group_commit.submit(services.ChunkIn(self.recording_id, chunk), self._wake))

    def _owe(self, answer: Pending | ApiError) -> None:
        self._owed.append(answer)
        self._drained.clear()
        if isinstance(answer, ApiError) and len(self._owed) == 1:
            self._answerable.set()
        if self._answerer is None:
            self._answerer = asyncio.get_running_loop().create_task(self._answer_forever())

    def _wake(self) -> None:
        # Called by the group commit for each chunk answered; only the oldest one matters.
        self._answerable.set()

    async def _answer_forever(self) -> None:
        """Send owed answers as they become ready, oldest first, never out of order."""
        owed = self._owed
        while True:
            await self._answerable.wait()
            self._answerable.clear()
            while owed and (isinstance(owed[0], ApiError) or owed[0].done):
                answer = owed.popleft()
                try:
                    await self._answer(answer)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("recording %s: answering a chunk failed", self.sid)
                if len(owed) < MAX_OWED:
                    self._room.set()
            if not owed:
                self._drained.set()

    async def _answer(self, answer: Pending | ApiError) -> None:
        if isinstance(answer, ApiError):
            await self._tell("error", answer.as_dict())
            return
        outcome = answer.outcome
        if isinstance(outcome, services.ChunkAck):
            if self._live_stream_pk is not None:
                # Stored first (durable), then decoded for the room: same bytes, same order.
                await self._feed_live(answer.chunk.data)
            await self._tell("response", RECEIVED)
        elif isinstance(outcome, ApiError):
            await self._tell("error", outcome.as_dict())
        else:
            if isinstance(outcome, services.RecordingGone):
                logger.error("recording %s: its row is gone, a chunk was refused", self.sid)
            error = ApiError("internal_error", "audio_chunk failed on the server.")
            await self._tell("error", error.as_dict())

    async def _tell(self, event: str, data: dict[str, Any]) -> None:
        if self._gone:
            return
        try:
            await self._send(event, data)
        except Exception:
            # The transport is gone (a send to a closed socket): later answers are dropped;
            # what was stored stays stored.
            self._gone = True

    async def _drain(self) -> None:
        """Wait until every owed answer was sent (or dropped, the client being gone)."""
        while self._owed:
            await self._drained.wait()

    def _stop_answering(self) -> None:
        if self._answerer is not None and self._answerer is not asyncio.current_task():
            self._answerer.cancel()
        self._answerer = None

    async def _stop(self) -> None:
        # The decoder's tail reaches the room before the stop ends the live stream.
        await self._finish_live()
        recording = await run_blocking(services.recording_stop, recording_id=self.recording_id)
        await self._send("result_file_path", result_file_path_payload(recording))

    async def stopped_elsewhere(self) -> None:
        """A force stop (from any worker) ended the recording: flush and reap the decoder."""
        await self._finish_live()

    # --- live decoding for the room (container recordings with a room) ---------------------

    async def _feed_live(self, chunk: bytes) -> None:
        if self._live is None:
            if self._live_fmt is None:
                return  # finished: a stop took the decoder away
            fmt = self._live_fmt.live_pcm
            self._live = LiveDecoder(
                command=live_command(self._live_fmt, fmt, max_s=settings.PARLEY_MAX_RECORDING_S),
                frame_bytes=fmt.frame_bytes,
                publish=self._publish_live,
                fail=self._live_failed,
            )
            try:
                await self._live.start()
            except OSError:
                logger.exception("recording %s: ffmpeg did not start", self.sid)
                await self._live_failed("the decoder could not be started")
                self._live_fmt = None
                return
        await self._live.feed(chunk)

    async def _publish_live(self, pcm: bytes) -> None:
        await runtime.run_db(
            services.recording_live_publish, stream_pk=self._live_stream_pk, data=pcm
        )

    async def _live_failed(self, reason: str) -> None:
        error = ApiError(
            "live_decode_failed",
            f"The audio could not be decoded for the room's live broadcast ({reason}). "
            "Recording goes on: the chunks are stored and the file is built from them.",
            field="chunk",
        )
        await self._send_quietly("error", error.as_dict())

    async def _finish_live(self) -> None:
        """Close the decoder's input and publish what it still had (once; later calls wait).

        No chunk is stored after a stop, so no decoder starts after this one finished."""
        if self._live is not None:
            await self._live.finish()

    async def _listen(self, layer: Any) -> None:
        try:
            while True:
                message = await layer.receive(self.channel_name)
                if message.get("type") == "recording.stopped":
                    await self.stopped_elsewhere()
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("recording %s: stop listener failed", self.sid, exc_info=True)

    # --- idle timeout ----------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = asyncio.get_running_loop().time()

    def _stop_watching(self) -> None:
        key_watch.discard(self)
        for task in (self._idle_task, self._listen_task):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        self._idle_task = self._listen_task = None

    async def _watch_idle(self) -> None:
        idle_s = settings.PARLEY_RECORDING_IDLE_S
        loop = asyncio.get_running_loop()
        # Sleeps until the deadline, then again if activity moved it: one wake-up per idle
        # period, not a poll, and nothing to do on the hot chunk path but store a time.
        while (remaining := self._last_activity + idle_s - loop.time()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)
        try:
            await self._expire(idle_s)
        except Exception:
            logger.exception("recording %s: idle timeout failed", self.sid)

    async def _expire(self, idle_s: float) -> None:
        """Nothing came for PARLEY_RECORDING_IDLE_S: save what there is and hang up."""
        self._idle_task = None
        await self._end(
            ApiError("idle_timeout", f"Nothing received for {idle_s:g} s: the session is closed.")
        )

    async def revoked(self) -> None:
        """The key the session was opened with was revoked: save what there is, hang up."""
        await self._end(
            ApiError(
                "invalid_api_key",
                "The API key was revoked: the session is closed.",
                field="Authorization",
                status_code=401,
            )
        )

    async def _end(self, error: ApiError) -> None:
        """End the session from the server's side: save what there is, tell the client
        (the error, and where its file is), and close the connection."""
        if self._ended:
            return
        self._ended = True
        self._stop_watching()
        recording = None
        try:
            await self._drain()
            self._stop_answering()
            if not await self._discard_if_empty():
                await self._finish_live()
                recording = await run_blocking(
                    services.recording_stop, recording_id=self.recording_id, refuse_empty=False
                )
        except ApiError as exc:
            error = exc
        await self._send_quietly("error", error.as_dict())
        if recording is not None and recording.status == RecordingStatus.COMPLETE:
            await self._send_quietly("result_file_path", result_file_path_payload(recording))
        await self._close()

    async def _discard_if_empty(self) -> bool:
        """Ended before its first chunk: no record is kept (services.recording_discard_empty)."""
        if self._live is not None:
            return False
        return await runtime.run_db(
            services.recording_discard_empty, recording_id=self.recording_id
        )

    async def _send_quietly(self, event: str, data: dict[str, Any]) -> None:
        try:
            await self._send(event, data)
        except Exception:
            logger.debug("recording %s: %s not delivered", self.sid, event, exc_info=True)


class KeyWatch:
    """Open sessions of this process opened with an API key, checked against the database
    (not the key cache) every KEY_CHECK_S: a key revoked while its session is open ends
    that session within a second or two (RecordingSession.revoked)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.sessions: dict[RecordingSession, str] = {}
        self._ending: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    def add(self, session: RecordingSession, key_hash: str) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is not loop:
            self.loop = loop
            self.sessions = {}
            self._task = loop.create_task(self._run(), name="parley-recording-keys")
        self.sessions[session] = key_hash

    def discard(self, session: RecordingSession) -> None:
        self.sessions.pop(session, None)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(KEY_CHECK_S)
            if not self.sessions:
                continue
            try:
                valid = await runtime.run_clock_db(
                    api_keys_valid, key_hashes=set(self.sessions.values())
                )
            except Exception as exc:
                logger.warning("recording key check failed: %r", exc)
                continue
            for session, key_hash in list(self.sessions.items()):
                if key_hash not in valid:
                    self.sessions.pop(session, None)
                    task = asyncio.ensure_future(session.revoked())
                    self._ending.add(task)
                    task.add_done_callback(self._ending.discard)


KEY_CHECK_S = 1.0
key_watch = KeyWatch()


async def notify_stopped(recording: Recording) -> None:
    """Tell the session's client that its recording was stopped elsewhere (force stop).

    The connection may live on another worker: Socket.IO reaches it through the client
    manager (Redis when configured), a plain WebSocket through the channel layer.
    """
    payload = result_file_path_payload(recording)
    try:
        if recording.transport == Transport.SOCKETIO:
            from recordings.sio import NAMESPACE, sio

            await sio.emit("result_file_path", payload, to=recording.sid, namespace=NAMESPACE)
        if recording.channel_name:
            # The plain WebSocket's consumer (which tells its client), or a Socket.IO
            # session's own channel (live decoding: it flushes its decoder).
            layer = get_channel_layer()
            if layer is not None:
                await layer.send(
                    recording.channel_name, {"type": "recording.stopped", "payload": payload}
                )
    except Exception:
        # The file is saved either way; a client that is gone simply does not hear of it.
        logger.warning("recording %s: stop notification failed", recording.sid, exc_info=True)
