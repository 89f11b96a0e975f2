"""WS /ws/audio: POST /audio's chunks over one WebSocket, each acknowledged once committed.

A speaker that streams continuously (a game agent, a TTS `say`) pays one connection instead
of one HTTP request per chunk. The fields, limits, refusals and the durability promise are
POST /audio's (docs/api.md), to the letter:

- a **text frame** is a JSON object with POST /audio's JSON fields (`stream_id`, `seq`,
  `data` as base64, `done`, `speech_text`, the format fields; `room` and `speaker` default
  to the connection's);
- a **binary frame** is raw PCM: the next chunk (seq + 1) of the stream the last JSON chunk
  on this socket named, in its format; before any JSON chunk, of the stream the query string
  names (`stream_id`, the format fields, `seq` of the first binary chunk, default 0);
- every chunk is answered, in the order sent, by `{"type": "ack", ...POST /audio's answer}`
  once it is committed, or `{"type": "error", "error", "detail", "field", "status", "seq"}`
  (the session goes on: the client retries a seq, which is idempotent).

Chunks that arrive while a commit is in flight go in the next one together (group commit,
`streams.services.chunk_ingest_group`): each is still acknowledged only once durable. At
most PARLEY_INGEST_WS_WINDOW chunks may wait unacknowledged; a client that sends more is
told `too_many_unacknowledged` and closed with 1008, so a fast client cannot pile frames up
in the server's memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from django.conf import settings

from config.errors import database_unavailable
from streams import services
from streams.auth import authenticate, require_writer, resolve_speaker
from streams.errors import ApiError
from streams.params import json_loads, parse_int
from streams.runtime import runtime
from streams.serializers import check_chunk_data, chunk_from_request

logger = logging.getLogger(__name__)

CLOSE_REFUSED = 4400  # the handshake's fields
CLOSE_UNAUTHORIZED = 4401
CLOSE_POLICY = 1008  # too many unacknowledged chunks
# A key revoked while its socket is open stops being honoured within this (issue 8 §3).
KEY_CHECK_S = 2.0
# The format fields a binary frame inherits (POST /audio's names).
FORMAT_FIELDS = ("sample_rate_hz", "channels", "bytes_per_sample", "playback_speed")

SendText = Callable[[str], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


class IngestSession:
    """One `/ws/audio` connection: parses frames on arrival, commits them in order."""

    def __init__(self, *, send_text: SendText, close: Close) -> None:
        self._send_text = send_text
        self._close = close
        self.room = "default"
        self.speaker = "agent"
        self._authorization: str | None = None
        self._key_checked = 0.0
        # What a binary frame is: a template chunk (stream, format) and its next seq.
        self._binary: services.ChunkIn | None = None
        self._binary_seq = 0
        self._binary_query: dict[str, Any] = {}
        self._waiting: list[tuple[services.ChunkIn | None, ApiError | None, Any]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task | None = None
        self._closed = False
        self._in_flight = 0  # chunks of the group being committed
        self._refusing = False  # past the window: closing once the group in flight is acked
        self.acknowledged = 0

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self, query: Mapping[str, str], authorization: str | None) -> bool:
        """Check the key, the room and the speaker; send `ready`. False (closed) if refused."""
        try:
            principal = await runtime.run_db(authenticate, authorization) if authorization else None
            require_writer(principal)
        except ApiError as refused:
            await self._refuse(refused, CLOSE_UNAUTHORIZED)
            return False
        try:
            # Only a missing room means "default": `room=` is refused, as everywhere in the API.
            self.room = services.validate_room_name(query.get("room", "default"))
            self.speaker = resolve_speaker(principal, query.get("speaker"), "agent")
            services.validate_speaker(self.speaker)
            self._binary_query = {
                name: query[name]
                for name in ("stream_id", "seq", *FORMAT_FIELDS, "speech_text")
                if name in query
            }
            if "seq" in self._binary_query:
                limit = settings.PARLEY_MAX_CHUNKS_PER_STREAM - 1
                parse_int(
                    self._binary_query["seq"], field="seq", minimum=0, maximum=limit, text=True
                )
        except ApiError as refused:
            await self._refuse(refused, CLOSE_REFUSED)
            return False
        self._authorization = authorization
        self._key_checked = time.monotonic()
        self._writer = asyncio.get_running_loop().create_task(
            self._write_forever(), name=f"ingest-ws-{self.room}-{self.speaker}"
        )
        await self._send_json(
            {
                "type": "ready",
                "room": self.room,
                "speaker": self.speaker,
                "max_chunk_bytes": settings.PARLEY_MAX_CHUNK_BYTES,
                "window": settings.PARLEY_INGEST_WS_WINDOW,
            }
        )
        return True

    async def stop(self) -> None:
        """The socket is gone: chunks not committed yet are dropped (none was acknowledged)."""
        self._closed = True
        if self._writer is not None:
            self._writer.cancel()
            # Waited for, not awaited: a cancellation of stop() itself must still propagate.
            await asyncio.wait([self._writer], timeout=5)

    # --- frames in ----------------------------------------------------------------------------

    async def take_text(self, text: str) -> None:
        seq: Any = None
        try:
            values = json_loads(text)
            if not isinstance(values, dict):
                raise _MALFORMED  # POST /audio's code for a body that is not an object
            seq = values.get("seq")
            values.setdefault("room", self.room)
            requested = values.get("speaker")
            if requested is not None and requested != self.speaker:
                raise ApiError(
                    "speaker_mismatch",
                    f"This socket speaks as {self.speaker!r}, not {requested!r}.",
                    field="speaker",
                    status_code=403,
                )
            chunk = chunk_from_request(values, raw_data=None, speaker=self.speaker)
        except ValueError:
            await self._enqueue(None, _MALFORMED, None)
            return
        except ApiError as refused:
            await self._enqueue(None, refused, seq if isinstance(seq, int) else None)
            return
        # Binary frames continue this stream, in its format.
        self._binary, self._binary_seq = chunk, chunk.seq + 1
        await self._enqueue(chunk, None, chunk.seq)

    async def take_bytes(self, data: bytes) -> None:
        template = self._binary
        try:
            if template is None:
                template = self._first_binary()
                self._binary, self._binary_seq = template, template.seq
            check_chunk_data(data, template.fmt, done=False)
        except ApiError as refused:
            await self._enqueue(None, refused, self._binary_seq if template is not None else None)
            return
        seq = self._binary_seq
        self._binary_seq = seq + 1
        # Built directly: dataclasses.replace() was the biggest cost of a binary frame.
        chunk = services.ChunkIn(
            room_name=template.room_name,
            speaker=template.speaker,
            stream_id=template.stream_id,
            seq=seq,
            data=data,
            done=False,
            speech_text="",
            fmt=template.fmt,
        )
        await self._enqueue(chunk, None, seq)

    def _first_binary(self) -> services.ChunkIn:
        if "stream_id" not in self._binary_query:
            raise ApiError(
                "missing_stream_id",
                "A binary frame continues the stream of the last JSON chunk on this socket, or "
                "the one named by ?stream_id=; there is neither yet.",
                field="stream_id",
            )
        # Validated as the raw-body form of POST /audio (fields as query strings), as an
        # empty final chunk would be; the frame's own bytes are checked by the caller.
        values = {**self._binary_query, "room": self.room, "done": "true"}
        values.setdefault("seq", "0")
        return chunk_from_request(values, raw_data=b"", speaker=self.speaker)

    async def _enqueue(self, chunk: services.ChunkIn | None, error: ApiError | None, seq: Any):
        if self._refusing:
            return  # closing: nothing more is taken
        if len(self._waiting) + self._in_flight >= settings.PARLEY_INGEST_WS_WINDOW:
            # Told at once; the group being committed still gets its acks, then the socket
            # closes and what waited behind it is dropped (never acknowledged).
            self._refusing = True
            refused = ApiError(
                "too_many_unacknowledged",
                f"More than {settings.PARLEY_INGEST_WS_WINDOW} chunks wait for their "
                "acknowledgement; wait for acks before sending more (PARLEY_INGEST_WS_WINDOW).",
                field=None,
                status_code=429,
            )
            await self._send_json(_error_frame(refused, seq))
            self._wake.set()
            return
        self._waiting.append((chunk, error, seq))
        self._wake.set()

    # --- commits out --------------------------------------------------------------------------

    async def _write_forever(self) -> None:
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            if self._refusing:
                self._waiting.clear()
                self._closed = True
                await self._close(CLOSE_POLICY, "too_many_unacknowledged")
                return
            while self._waiting and not self._closed and not self._refusing:
                group, self._waiting = self._waiting, []
                self._in_flight = len(group)
                try:
                    await self._commit(group)
                finally:
                    self._in_flight = 0

    async def _commit(self, group: list[tuple[services.ChunkIn | None, ApiError | None, Any]]):
        chunks = [chunk for chunk, _, _ in group if chunk is not None]
        answers: list[dict[str, Any] | ApiError] = []
        if chunks:
            try:
                await self._check_key()
                answers = await runtime.run_db(services.chunk_ingest_group, chunks)
            except ApiError as refused:
                answers = [refused] * len(chunks)
            except Exception as error:
                if not database_unavailable(error):
                    raise
                answers = [_UNAVAILABLE] * len(chunks)
        outcomes = iter(answers)
        for chunk, error, seq in group:
            outcome = next(outcomes) if chunk is not None else error
            if isinstance(outcome, ApiError):
                await self._send_json(_error_frame(outcome, seq))
            else:
                self.acknowledged += 1
                await self._send_text(ack_text(outcome))
            if isinstance(outcome, ApiError) and outcome.code in ("invalid_api_key",):
                await self._close(CLOSE_UNAUTHORIZED, outcome.code)
                self._closed = True
                return

    async def _send_json(self, payload: dict[str, Any]) -> None:
        await self._send_text(_encode(payload))

    async def _check_key(self) -> None:
        """Revoked keys stop being honoured within KEY_CHECK_S (the check is a query)."""
        if self._authorization is None or time.monotonic() - self._key_checked < KEY_CHECK_S:
            return
        await runtime.run_db(authenticate, self._authorization)
        self._key_checked = time.monotonic()

    async def _refuse(self, refused: ApiError, code: int) -> None:
        self._closed = True
        with contextlib.suppress(Exception):
            await self._send_json(_error_frame(refused, None))
        await self._close(code, refused.code)


_encode = json.JSONEncoder(separators=(",", ":")).encode
# The hot path's answer (streams.services._ingest_in_order_run), the ack of nearly every
# chunk: formatted, not run through the JSON encoder. Stream ids are [A-Za-z0-9._:-] only
# (services.STREAM_ID_RE), so they need no escaping.
_HOT_ACK_KEYS = frozenset(
    ("stream_id", "seq", "duplicate", "received_bytes", "received_chunks", "done", "status")
)
_HOT_ACK = (
    '{{"type":"ack","stream_id":"{stream_id}","seq":{seq},"duplicate":false,'
    '"received_bytes":{received_bytes},"received_chunks":{received_chunks},"done":false,'
    '"status":"streaming"}}'
)


def ack_text(answer: dict[str, Any]) -> str:
    """`{"type": "ack", ...answer}` as JSON text; the common ack without the encoder."""
    if (
        answer.keys() == _HOT_ACK_KEYS
        and answer["status"] == "streaming"
        and answer["duplicate"] is False
        and answer["done"] is False
        and type(answer["seq"]) is int
        and type(answer["received_bytes"]) is int
        and type(answer["received_chunks"]) is int
        and services.STREAM_ID_RE.match(answer["stream_id"])
    ):
        return _HOT_ACK.format_map(answer)
    return _encode({"type": "ack", **answer})


def _error_frame(refused: ApiError, seq: Any) -> dict[str, Any]:
    return {"type": "error", **refused.as_dict(), "status": refused.status_code, "seq": seq}


_MALFORMED = ApiError("malformed_json", "A text frame must be a JSON object (a chunk).", field=None)
_UNAVAILABLE = ApiError(
    "unavailable",
    "The database does not answer for now; send the chunk again (seqs are idempotent).",
    field=None,
    status_code=503,
)
