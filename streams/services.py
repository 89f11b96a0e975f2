"""Every write to rooms, turns and streams, with its events (DESIGN.md: outbox, release).

Functions are keyword-only and named <entity>_<action>. Each runs in one transaction that
locks the room row first, so writes to a room are serialized in a single order on every
worker and the room's event ids are committed in the order they were allocated.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from streams.audio import PcmFormat, advance_playhead
from streams.errors import ApiError, Conflict, FloorHeld
from streams.events import (
    EventBatch,
    allocate_event_ids,
    audio_message,
    broadcast,
    event_message,
    insert_events,
    iso,
    room_group,
)
from streams.gaps import Gaps
from streams.heard import heard_prefix
from streams.models import (
    ACTIVE_TURN_STATUSES,
    Chunk,
    Room,
    Stream,
    StreamStatus,
    Turn,
    TurnStatus,
    Utterance,
)
from streams.params import parse_int
from streams.selectors import (
    active_turn,
    free_floor_state,
    room_state,
    spectator_count,
    stream_heard_ms,
    stream_missing,
)

# Not only dots: a browser collapses `/rooms/../` to `/`, so `.` and `..` were unreachable.
ROOM_NAME_RE = re.compile(r"^(?!\.+$)[A-Za-z0-9._-]{1,64}$")
STREAM_ID_RE = re.compile(r"^[A-Za-z0-9._:-]+$")
SPEAKER_RE = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
MAX_STREAM_ID_LENGTH = 128
# A stream's word marks: its text is at most MAX_SPEECH_TEXT characters, so far fewer words.
MAX_WORD_MARKS = 20_000


def validate_room_name(name: str) -> str:
    if not isinstance(name, str) or not ROOM_NAME_RE.fullmatch(name):
        raise ApiError(
            "invalid_room",
            "room must be 1-64 characters of letters, digits, '.', '_' or '-', not only dots.",
            field="room",
        )
    return name


def validate_speaker(name: Any) -> str:
    if not isinstance(name, str) or not SPEAKER_RE.fullmatch(name):
        raise ApiError(
            "invalid_speaker",
            "speaker must be 1-128 characters of letters, digits, '.', '_', ':', '@' or '-'.",
            field="speaker",
        )
    return name


def validate_stream_id(stream_id: Any) -> str:
    if not isinstance(stream_id, str) or stream_id == "":
        raise ApiError(
            "invalid_stream_id", "stream_id must be a non-empty string.", field="stream_id"
        )
    if len(stream_id) > MAX_STREAM_ID_LENGTH:
        raise ApiError(
            "invalid_stream_id",
            f"stream_id must be at most {MAX_STREAM_ID_LENGTH} characters.",
            field="stream_id",
        )
    if not STREAM_ID_RE.fullmatch(stream_id):
        raise ApiError(
            "invalid_stream_id",
            "stream_id may only contain letters, digits and '.', '_', ':', '-'.",
            field="stream_id",
        )
    return stream_id


def _lock_room(room_name: str) -> Room:
    room = Room.objects.select_for_update().filter(name=room_name).first()
    if room is not None:
        return room
    try:
        with transaction.atomic():
            Room.objects.create(name=room_name)
    except IntegrityError:
        pass  # another worker created it first
    return Room.objects.select_for_update().get(name=room_name)


def _after_commit_arm(kind: str, key: str, when: datetime) -> None:
    from streams.runtime import runtime

    transaction.on_commit(lambda: runtime.arm(kind, key, when))


def _turn_event(batch: EventBatch, *, turn_id: Any, speaker: str, status: str, reason: str) -> None:
    batch.add(
        "turn",
        {"turn_id": str(turn_id), "speaker": speaker, "status": status, "reason": reason},
    )


def _turn_changed(batch: EventBatch, turn: Turn) -> None:
    _turn_event(
        batch, turn_id=turn.id, speaker=turn.speaker, status=turn.status, reason=turn.reason
    )


def _claim(room: Room, speaker: str, batch: EventBatch, now: datetime) -> Turn:
    lease = timedelta(seconds=settings.PARLEY_TURN_LEASE_S)
    try:
        with transaction.atomic():
            turn = Turn.objects.create(
                room=room,
                speaker=speaker,
                status=TurnStatus.CLAIMED,
                reason="claimed",
                claimed_at=now,
                lease_expires_at=now + lease,
            )
    except IntegrityError as exc:
        # The database's one-active-turn rule caught a claim the room lock did not.
        holder = active_turn(room)
        if holder is None:
            raise
        raise _floor_held(holder) from exc
    _turn_changed(batch, turn)
    batch.add("state", room_state(room))
    _after_commit_arm("expire", str(turn.id), turn.lease_expires_at)
    return turn


def _floor_held(turn: Turn) -> FloorHeld:
    return FloorHeld(
        holder=turn.speaker, turn_id=str(turn.id), expected_release_at=iso(turn.release_at)
    )


def floor_claim(*, room_name: str, speaker: str) -> tuple[Turn, bool]:
    """Claim a room's floor. Returns (turn, created); the holder claiming again gets its turn."""
    now = timezone.now()
    with transaction.atomic():
        room = _lock_room(room_name)
        batch = EventBatch(room)
        turn = active_turn(room)
        if turn is not None:
            if turn.speaker == speaker:
                return turn, False
            raise _floor_held(turn)
        turn = _claim(room, speaker, batch, now)
        batch.flush()
        return turn, True


def _interrupt_stream(
    stream: Stream,
    now: datetime,
    heard_text: str | None = None,
    heard_ms: int | None = None,
    script: str | None = None,
) -> str:
    """Cut `stream` off at the listener's playhead; returns what was said ("" if nothing).

    The stream's text becomes the part that was heard: `heard_text` when the caller knows
    it (the voice agent models its own listener), else the words played by `heard_ms`
    (the stream's word marks when it has them, its heard fraction otherwise;
    streams/heard.py). The whole text stays as the `script`.
    """
    heard = stream_heard_ms(stream, now) if heard_ms is None else heard_ms
    duration = _duration_ms(stream)
    stream.heard_ms = min(max(0, heard), duration)
    stream.script = script or stream.script or stream.speech_text
    if heard_text is None:
        fmt = stream.pcm_format
        heard_text = heard_prefix(
            stream.script,
            heard_bytes=fmt.bytes_for(stream.heard_ms / 1000),
            audio_bytes=stream.total_bytes,
            complete=stream.final_seq is not None,
            bytes_per_second=fmt.sample_rate_hz * fmt.frame_bytes,  # of the text at 1x
            words=stream.word_marks,
        )
    stream.speech_text = heard_text
    stream.status = StreamStatus.INTERRUPTED
    stream.ended_at = now
    stream.save(update_fields=["heard_ms", "status", "ended_at", "speech_text", "script"])
    Utterance.objects.update_or_create(
        stream=stream,
        defaults={
            "room_id": stream.room_id,
            "speaker": stream.speaker,
            "text": stream.speech_text,
            "script": stream.script,
            "duration_ms": duration,
            "heard_ms": stream.heard_ms,
        },
    )
    return heard_text


def _publish_heard(batch: EventBatch, stream: Stream, said: str) -> None:
    """The `speech` event of a cut stream: only what was heard, marked `interrupted`."""
    if said:
        batch.add(
            "speech",
            {
                "stream_id": stream.stream_id,
                "speaker": stream.speaker,
                "text": said,
                "interrupted": True,
                "heard_ms": stream.heard_ms,
            },
        )


def _live_stream(turn: Turn) -> Stream | None:
    return (
        Stream.objects.filter(turn=turn)
        .exclude(status__in=[StreamStatus.PLAYED, StreamStatus.INTERRUPTED])
        .first()
    )


def floor_yield(
    *,
    room_name: str,
    speaker: str | None,
    force: bool,
    heard_text: str | None = None,
    heard_ms: int | None = None,
    reason: str | None = None,
    script: str | None = None,
) -> Turn:
    """The holder gives the floor up, or a moderator (force) cuts the speaker off.

    The stream being cut off keeps its whole text as its `script`; what was heard of it
    becomes the stream's and utterance's text and is published as a `speech` event marked
    `interrupted`, with `heard_ms`, before the turn event. `heard_text`, when given, is that
    heard part as a surface knows it (a voice agent's barge-in); otherwise it is worked out
    from the room's playhead (streams/heard.py). `script`, when given, is the whole text
    of a stream whose text had not arrived yet (the agent's reply).
    `heard_ms`, when given, is that surface's own listener's playhead (the room's would
    under-count a stream it got late, after waiting for the floor). `reason` replaces the
    turn's recorded reason ("forced" / "yielded").
    """
    now = timezone.now()
    with transaction.atomic():
        room = _lock_room(room_name)
        turn = active_turn(room)
        if turn is None:
            raise Conflict("floor_free", f"Nobody holds the floor of room {room_name!r}.")
        if not force and turn.speaker != speaker:
            raise ApiError(
                "not_holder",
                f"The floor is held by {turn.speaker!r}, not {speaker!r}; "
                "a moderator can cut it with ?force=1.",
                field="speaker",
                status_code=403,
            )
        stream = _live_stream(turn)
        batch = EventBatch(room)
        if stream is not None:
            said = _interrupt_stream(stream, now, heard_text, heard_ms, script)
            _publish_heard(batch, stream, said)
            turn.status = TurnStatus.INTERRUPTED
        else:
            turn.status = TurnStatus.RELEASED
        turn.reason = reason or ("forced" if force else "yielded")
        turn.ended_at = now
        turn.save(update_fields=["status", "reason", "ended_at"])
        _turn_changed(batch, turn)
        batch.add("state", room_state(room))
        batch.flush()
        return turn


def _duration_ms(stream: Stream) -> int:
    return round(stream.pcm_format.duration_s(stream.total_bytes) * 1000)


@dataclass(frozen=True)
class ChunkIn:
    room_name: str
    speaker: str
    stream_id: str
    seq: int
    data: bytes
    done: bool
    speech_text: str
    fmt: PcmFormat
    # (text offset, audio byte offset) word marks from a producer that has them (chat.say):
    # appended to the stream's, so a cut publishes exactly the words played.
    words: tuple[tuple[int, int], ...] = ()


FORMAT_FIELDS = ("sample_rate_hz", "channels", "bytes_per_sample", "playback_speed")


def _check_same_stream(stream: Stream, room: Room, chunk: ChunkIn) -> None:
    if stream.room_id != room.pk or stream.speaker != chunk.speaker:
        raise Conflict(
            "stream_id_conflict",
            f"stream_id {chunk.stream_id!r} belongs to speaker {stream.speaker!r} in room "
            f"{stream.room.name!r}; use a new stream_id.",
            field="stream_id",
        )
    for name in FORMAT_FIELDS:
        before, now = getattr(stream, name), getattr(chunk.fmt, name)
        if before != now:
            raise ApiError(
                "format_changed",
                f"{name} changed mid-stream from {before} to {now}; a stream has one format.",
                field=name,
            )


def _turn_for_new_stream(room: Room, speaker: str, batch: EventBatch, now: datetime) -> Turn:
    turn = active_turn(room)
    if turn is None:
        return _claim(room, speaker, batch, now)
    if turn.speaker != speaker:
        raise _floor_held(turn)
    if turn.status != TurnStatus.CLAIMED or Stream.objects.filter(turn=turn).exists():
        raise Conflict(
            "floor_busy",
            f"Speaker {speaker!r} is still playing a stream in this turn; start the next "
            "stream after it is released.",
            field="stream_id",
            holder=turn.speaker,
            turn_id=str(turn.id),
            expected_release_at=iso(turn.release_at),
        )
    return turn


def chunk_publish(stream: Stream, chunk: Chunk, batch: EventBatch, now: datetime) -> None:
    """Put a chunk on the listener's playhead and announce it, in seq order."""
    fmt = stream.pcm_format
    offset_ms = round(fmt.duration_s(stream.emitted_bytes) * 1000)
    chunk.offset_bytes = stream.emitted_bytes
    if chunk.size:
        playhead = stream.playhead_at.timestamp() if stream.playhead_at else None
        start, end = advance_playhead(playhead, now.timestamp(), fmt.duration_s(chunk.size))
        chunk.play_start_at = datetime.fromtimestamp(start, tz=now.tzinfo)
        stream.playhead_at = datetime.fromtimestamp(end, tz=now.tzinfo)
        batch.add(
            "audio_chunk",
            {
                "stream_id": stream.stream_id,
                "seq": chunk.seq,
                "speaker": stream.speaker,
                "sample_rate_hz": stream.sample_rate_hz,
                "channels": stream.channels,
                "bytes_per_sample": stream.bytes_per_sample,
                "playback_speed": stream.playback_speed,
                "offset_ms": offset_ms,
            },
            chunk=chunk,
            data=bytes(chunk.data),
        )
    stream.emitted_bytes += chunk.size
    stream.next_emit_seq = chunk.seq + 1


def _publish_buffered(stream: Stream, batch: EventBatch, now: datetime, *, skip_gaps: bool) -> None:
    """Publish chunks that were waiting for a lower seq (or, at the gap timeout, all of them,
    recording the seqs skipped as ranges and a count: never one entry per missing seq)."""
    waiting = Chunk.objects.filter(
        stream=stream, seq__gte=stream.next_emit_seq, offset_bytes__isnull=True
    ).order_by("seq")
    missing = Gaps()
    for chunk in waiting:
        if chunk.seq != stream.next_emit_seq:
            if not skip_gaps:
                break
            missing.add(stream.next_emit_seq, chunk.seq - 1)
        chunk_publish(stream, chunk, batch, now)
        chunk.save(update_fields=["offset_bytes", "play_start_at"])
    if not skip_gaps:
        return
    if stream.final_seq is not None:
        missing.add(stream.next_emit_seq, stream.final_seq)
    stream.missing_ranges = missing.ranges
    stream.missing_count = missing.count


def _finalize(stream: Stream, room: Room, batch: EventBatch, now: datetime) -> None:
    """The last chunk is in: fix the predicted end and hand the turn to the release clock."""
    stream.status = StreamStatus.PLAYING
    stream.finalized_at = now
    stream.gap_deadline = None
    stream.duration_ms = _duration_ms(stream)
    has_audio = stream.emitted_bytes > 0 and stream.playhead_at is not None
    release_at = stream.playhead_at if has_audio else now
    stream.playback_ends_at = release_at
    Utterance.objects.update_or_create(
        stream=stream,
        defaults={
            "room": room,
            "speaker": stream.speaker,
            "text": stream.speech_text,
            "script": stream.script or stream.speech_text,
            "duration_ms": stream.duration_ms,
        },
    )
    turn_id = stream.turn_id
    Turn.objects.filter(pk=turn_id, status=TurnStatus.CLAIMED).update(
        status=TurnStatus.FINALIZED, finalized_at=now, release_at=release_at, reason="finalized"
    )
    stream.save()
    if release_at <= now:
        # No audio, or a slow producer whose audio already finished: release right here.
        plan = _plan_for(turn_id=turn_id, release_at=release_at, stream=stream, room=room)
        if _release(room, plan, batch, now):
            stream.status = StreamStatus.PLAYED
            stream.ended_at = now
            stream.heard_ms = stream.duration_ms
    else:
        _after_commit_arm("release", str(turn_id), release_at)
        # The other processes stand by as its backup, in case this one dies before then.
        from streams.scheduler import release_announce

        release_announce(turn_id=turn_id, release_at=release_at)


@dataclass(frozen=True)
class ReleasePlan:
    """Everything a release writes and announces, read ahead of its moment.

    The timer reads it a little before the predicted end (`release_prepare`), so at the
    moment itself only the short write transaction is left (`release_commit`).
    """

    turn_id: str
    speaker: str  # the turn's holder, who is also its stream's speaker
    room_id: int
    room_name: str
    release_at: datetime
    spectators: int
    stream_pk: int | None = None
    stream_id: str = ""
    duration_ms: int = 0
    total_bytes: int = 0
    speech_text: str = ""


def _plan_for(
    *, turn_id: Any, release_at: datetime, room: Room, stream: Stream | None, speaker: str = ""
) -> ReleasePlan:
    plan = ReleasePlan(
        turn_id=str(turn_id),
        speaker=stream.speaker if stream is not None else speaker,
        room_id=room.pk,
        room_name=room.name,
        release_at=release_at,
        spectators=spectator_count(room),
    )
    if stream is None:
        return plan
    return replace(
        plan,
        stream_pk=stream.pk,
        stream_id=stream.stream_id,
        duration_ms=stream.duration_ms,
        total_bytes=stream.total_bytes,
        speech_text=stream.speech_text,
    )


def _release(room: Room, plan: ReleasePlan, batch: EventBatch, now: datetime) -> bool:
    """Release a finalized turn exactly once: only the update that matches a row emits.

    The caller holds the room lock. Nothing is re-read: after a release the room has no
    active turn (one per room), so the `state` that follows is known without a query.
    """
    ended_at = connection.ops.adapt_datetimefield_value(now)
    with connection.cursor() as cursor:
        # Plain SQL: this is the transaction the release's lateness waits for.
        cursor.execute(
            "UPDATE streams_turn SET status = %s, ended_at = %s, reason = %s"
            " WHERE id = %s AND status = %s",
            [
                TurnStatus.RELEASED.value,
                ended_at,
                "played",
                Turn._meta.pk.get_db_prep_value(uuid.UUID(plan.turn_id), connection),
                TurnStatus.FINALIZED.value,
            ],
        )
        if cursor.rowcount != 1:
            return False
        if plan.stream_pk is not None:
            cursor.execute(
                "UPDATE streams_stream SET status = %s, ended_at = %s, heard_ms = %s WHERE id = %s",
                [StreamStatus.PLAYED.value, ended_at, plan.duration_ms, plan.stream_pk],
            )
            cursor.execute(
                "UPDATE streams_utterance SET published_at = %s, heard_ms = %s"
                " WHERE stream_id = %s",
                [ended_at, plan.duration_ms, plan.stream_pk],
            )
    if plan.stream_pk is not None:
        ids = {
            "stream_id": plan.stream_id,
            "speaker": plan.speaker,
            "turn_id": plan.turn_id,
        }
        batch.add(
            "playback_done", {**ids, "duration_ms": plan.duration_ms, "bytes": plan.total_bytes}
        )
        if plan.speech_text:
            batch.add(
                "speech",
                {
                    "stream_id": plan.stream_id,
                    "speaker": plan.speaker,
                    "text": plan.speech_text,
                },
            )
        batch.add("input", {"name": "SpeechFinished", **ids})
        batch.add("input", {"name": "AudioEnded", **ids})
    _turn_event(
        batch,
        turn_id=plan.turn_id,
        speaker=plan.speaker,
        status=TurnStatus.RELEASED.value,
        reason="played",
    )
    batch.add(
        "state", free_floor_state(spectators=plan.spectators, last_event_id=room.last_event_id)
    )
    return True


def validate_seq(seq: Any) -> int:
    """A chunk's seq: 0 to PARLEY_MAX_CHUNKS_PER_STREAM - 1, or ApiError `invalid_seq`.

    The bound is what keeps a seq from sizing the server's work: a stream cannot hold more
    chunks than that, so no seq beyond it can ever be filled in below.
    """
    limit = settings.PARLEY_MAX_CHUNKS_PER_STREAM
    return parse_int(
        seq,
        field="seq",
        minimum=0,
        maximum=limit - 1,
        why=f" (a stream holds at most PARLEY_MAX_CHUNKS_PER_STREAM = {limit} chunks)",
    )


def chunk_ingest(chunk: ChunkIn) -> dict[str, Any]:
    """POST /audio: store one chunk durably, publish what is now in order, maybe finalize.

    Raises ApiError `invalid_seq` for a seq past PARLEY_MAX_CHUNKS_PER_STREAM, and the
    other refusals of docs/api.md.
    """
    now = timezone.now()
    if not 0 <= chunk.seq < settings.PARLEY_MAX_CHUNKS_PER_STREAM:
        validate_seq(chunk.seq)  # raises, with the detail
    with transaction.atomic():
        acknowledged = _ingest_next_in_order(chunk, now)
        if acknowledged is not None:
            return acknowledged
        room = _lock_room(chunk.room_name)
        batch = EventBatch(room)
        stream = Stream.objects.filter(stream_id=chunk.stream_id).select_related("turn").first()
        if stream is not None:
            _check_same_stream(stream, room, chunk)
            # The next seq in order cannot be stored yet (it would have been published), so
            # the common case skips the duplicate lookup.
            existing = (
                Chunk.objects.filter(stream=stream, seq=chunk.seq).first()
                if chunk.seq != stream.next_emit_seq
                else None
            )
            if existing is not None:
                if bytes(existing.data) == chunk.data and existing_done_matches(stream, chunk):
                    return _ack(stream, chunk.seq, duplicate=True)
                raise Conflict(
                    "chunk_conflict",
                    f"seq {chunk.seq} of stream {chunk.stream_id!r} was already received with "
                    "different content.",
                    field="seq",
                )
            if not stream.is_open:
                raise Conflict(
                    "stream_finalized",
                    f"Stream {chunk.stream_id!r} is {stream.status}; it takes no more chunks.",
                    field="stream_id",
                )
            _check_seq_fits(stream, chunk)
        if stream is None:
            turn = _turn_for_new_stream(room, chunk.speaker, batch, now)
            stream = Stream.objects.create(
                stream_id=chunk.stream_id,
                room=room,
                turn=turn,
                speaker=chunk.speaker,
                sample_rate_hz=chunk.fmt.sample_rate_hz,
                channels=chunk.fmt.channels,
                bytes_per_sample=chunk.fmt.bytes_per_sample,
                playback_speed=chunk.fmt.playback_speed,
                first_arrival_at=now,
            )
        limit = settings.PARLEY_MAX_STREAM_BYTES
        if stream.total_bytes + len(chunk.data) > limit:
            raise ApiError(
                "stream_too_large",
                f"This chunk would take the stream past PARLEY_MAX_STREAM_BYTES ({limit} bytes).",
                field="data",
                status_code=413,
            )
        record = Chunk(
            stream=stream,
            room_id=stream.room_id,
            seq=chunk.seq,
            data=chunk.data,
            size=len(chunk.data),
            received_at=now,
        )
        in_order = chunk.seq == stream.next_emit_seq
        buffered_before = stream.chunk_count - stream.next_emit_seq
        if in_order:
            chunk_publish(stream, record, batch, now)
        record.save(force_insert=True)
        stream.total_bytes += record.size
        stream.chunk_count += 1
        if chunk.speech_text:
            stream.speech_text = stream.script = chunk.speech_text
        if chunk.words and len(stream.word_marks) < MAX_WORD_MARKS:
            room_left = MAX_WORD_MARKS - len(stream.word_marks)
            stream.word_marks = [*stream.word_marks, *map(list, chunk.words[:room_left])]
        if in_order and buffered_before > 0:
            _publish_buffered(stream, batch, now, skip_gaps=False)
        if chunk.done:
            stream.final_seq = chunk.seq
        if stream.status == StreamStatus.STREAMING and stream.final_seq is not None:
            if stream.next_emit_seq > stream.final_seq:
                _finalize(stream, room, batch, now)
            else:
                stream.status = StreamStatus.AWAITING_GAPS
                stream.gap_deadline = now + timedelta(seconds=settings.PARLEY_GAP_TIMEOUT_S)
                _after_commit_arm("gap", stream.stream_id, stream.gap_deadline)
        elif (
            stream.status == StreamStatus.AWAITING_GAPS and stream.next_emit_seq > stream.final_seq
        ):
            _finalize(stream, room, batch, now)
        if stream.is_open:
            _renew_lease(stream.turn, now)
            stream.save(update_fields=STREAM_PROGRESS_FIELDS)
        batch.flush()
        return _ack(stream, chunk.seq, duplicate=False)


def chunk_ingest_group(chunks: list[ChunkIn]) -> list[dict[str, Any] | ApiError]:
    """Several chunks in one transaction (group commit): one durable write for all of them.

    A stream's next chunks in order go through the hot path together (one statement for
    the run on PostgreSQL, `_ingest_in_order_run`); any other chunk is `chunk_ingest` in a
    savepoint of its own, so a refused one (its ApiError in the answer, at its place)
    leaves the others stored. Answers come in the chunks' order; they are only true once
    this returns, i.e. once the group is committed. A database error fails the whole group
    (raised, nothing of it stored), as it would fail each of them alone.
    """
    answers: list[dict[str, Any] | ApiError] = []
    now = timezone.now()
    with transaction.atomic():
        index = 0
        while index < len(chunks):
            # The common case, a stream's next chunks in order, in one go: the hot path
            # writes nothing when it declines, so it needs no savepoint of its own.
            run = _in_order_run(chunks, index)
            acknowledged = _ingest_in_order_run(run, now) if run else None
            if acknowledged is not None:
                answers.extend(acknowledged)
                index += len(run)
                continue
            try:
                answers.append(chunk_ingest(chunks[index]))
            except ApiError as refused:
                answers.append(refused)
            index += 1
    return answers


def _aware(moment: datetime) -> datetime:
    # SQLite hands raw queries naive UTC datetimes; PostgreSQL aware ones.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# The hot path's writes (plain SQL; see _ingest_in_order_run). `{rows}` is one
# "(%s, ..., %s)" per chunk: a run of chunks is one statement.
INSERT_CHUNKS = (
    "INSERT INTO streams_chunk"
    " (stream_id, room_id, seq, data, size, received_at, offset_bytes, play_start_at)"
    " VALUES {rows} RETURNING id, seq"
)
UPDATE_PROGRESS = (
    "UPDATE streams_stream SET total_bytes = %s, chunk_count = %s, next_emit_seq = %s,"
    " emitted_bytes = %s, playhead_at = %s WHERE id = %s"
)
# PostgreSQL: the chunks, the stream's progress, the room's event ids and the events in one
# statement (each statement is a round trip). Event ids follow the chunks' seqs: the last
# chunk gets the room's new last_event_id.
POSTGRES_RUN = (
    "WITH c AS (" + INSERT_CHUNKS + "), s AS (" + UPDATE_PROGRESS + "),"
    " r AS (UPDATE streams_room SET last_event_id = last_event_id + %s"
    " WHERE id = %s RETURNING last_event_id),"
    " e (seq, payload) AS (VALUES {events})"
    " INSERT INTO streams_roomevent (room_id, seq, type, payload, chunk_id, created_at)"
    " SELECT %s, r.last_event_id - %s + c.seq, 'audio_chunk', e.payload, c.id, %s"
    " FROM r, c JOIN e ON e.seq = c.seq"
    " RETURNING seq"
)
# psycopg's placeholder for a parameter sent in binary (server-side binding, see
# _postgres_cursor): the chunk's bytes travel as they are, not as a hex literal in the text.
BINARY_PARAM = "%b"


def _in_order_run(chunks: list[ChunkIn], start: int) -> list[ChunkIn]:
    """The longest run from `start` the hot path may take in one go: non-final chunks with
    data, of one stream, room, speaker and format, with consecutive seqs (may be empty)."""
    run: list[ChunkIn] = []
    limit = settings.PARLEY_MAX_CHUNKS_PER_STREAM
    for chunk in chunks[start:]:
        if chunk.done or chunk.speech_text or chunk.words or not chunk.data:
            break
        if not 0 <= chunk.seq < limit:
            break
        if run:
            first = run[0]
            if (
                chunk.stream_id != first.stream_id
                or chunk.room_name != first.room_name
                or chunk.speaker != first.speaker
                or chunk.fmt != first.fmt
                or chunk.seq != run[-1].seq + 1
            ):
                break
        run.append(chunk)
    return run


def _postgres_cursor() -> Any:
    """A psycopg cursor with server-side binding on Django's connection (same transaction).

    Django's psycopg backend binds parameters client-side: every chunk's bytes went into
    the statement's text as a hex literal, twice their size, built in Python. A plain
    `psycopg.Cursor` sends parameters apart from the text, `%b` ones in binary.
    """
    connection.ensure_connection()
    return psycopg.Cursor(connection.connection)


ROOM_LOCK = "SELECT id FROM streams_room WHERE name = %s"
STREAM_READ = (
    "SELECT s.id, s.room_id, s.speaker, s.status, s.sample_rate_hz, s.channels,"
    " s.bytes_per_sample, s.playback_speed, s.total_bytes, s.chunk_count,"
    " s.next_emit_seq, s.emitted_bytes, s.playhead_at, s.turn_id, t.status,"
    " t.lease_expires_at FROM streams_stream s"
    " LEFT JOIN streams_turn t ON t.id = s.turn_id WHERE s.stream_id = %s"
)


def _lock_and_read_pipelined(first: ChunkIn) -> tuple[tuple | None, tuple | None]:
    """PostgreSQL: lock the room row, then read the stream, in one round trip.

    psycopg's pipeline mode sends both statements (and the transaction's BEGIN if it is
    the first) before reading any answer; the server still runs them one after the other,
    so the stream is read only once the room lock is held, as fresh as with two trips.
    Returns (room row or None, stream row or None).
    """
    raw = connection.connection
    room_cursor, stream_cursor = psycopg.Cursor(raw), psycopg.Cursor(raw)
    with room_cursor, stream_cursor:
        with raw.pipeline():
            room_cursor.execute(ROOM_LOCK + " FOR UPDATE", [first.room_name])
            stream_cursor.execute(STREAM_READ, [first.stream_id])
        return room_cursor.fetchone(), stream_cursor.fetchone()


def _ingest_next_in_order(chunk: ChunkIn, now: datetime) -> dict[str, Any] | None:
    """`_ingest_in_order_run` for one chunk: its answer, or None for the general path."""
    if not _in_order_run([chunk], 0):
        return None
    answers = _ingest_in_order_run([chunk], now)
    return answers[0] if answers is not None else None


def _ingest_in_order_run(run: list[ChunkIn], now: datetime) -> list[dict[str, Any]] | None:
    """The hot path in plain SQL: the next in-order, non-final chunks of an open stream.

    `run` comes from `_in_order_run` (one stream, consecutive seqs, none final). Same
    statements and effects as the general path below, chunk by chunk (room lock, chunks,
    stream progress, lease, one audio_chunk event each with consecutive ids), without the
    ORM's per-query overhead, which was most of the ingest cost (docs/benchmarks.md), and
    once per run instead of once per chunk: a group commit of N chunks of one stream is two
    reads and one write statement on PostgreSQL (four on SQLite), and one broadcast after
    commit with the N events in order. Returns None for anything else (a new stream, a
    retry, a format change, a limit, a gap), which the general path then handles and
    answers in full; nothing is written then.
    """
    first = run[0]
    ops = connection.ops
    postgres = connection.vendor == "postgresql"
    lock = " FOR UPDATE" if connection.features.has_select_for_update else ""
    with connection.cursor() as cursor:
        if postgres:
            room_row, row = _lock_and_read_pipelined(first)
        else:
            cursor.execute(ROOM_LOCK + lock, [first.room_name])
            room_row = cursor.fetchone()
            row = None
            if room_row is not None:
                cursor.execute(STREAM_READ, [first.stream_id])
                row = cursor.fetchone()
        if room_row is None or row is None:
            return None
        room_id = room_row[0]
        (stream_pk, stream_room, speaker, status, rate, channels, width, speed, total, count,
         next_seq, emitted, playhead, turn_id, turn_status, lease) = row  # fmt: skip
        fmt = first.fmt
        sizes = [len(chunk.data) for chunk in run]
        if (
            stream_room != room_id
            or speaker != first.speaker
            or status != StreamStatus.STREAMING
            or first.seq != next_seq
            or count != next_seq  # chunks are waiting for a gap to fill
            or (rate, channels, width, speed)
            != (fmt.sample_rate_hz, fmt.channels, fmt.bytes_per_sample, fmt.playback_speed)
            or total + sum(sizes) > settings.PARLEY_MAX_STREAM_BYTES
        ):
            return None
        lease_end = now + timedelta(seconds=settings.PARLEY_TURN_LEASE_S)
        if turn_status == TurnStatus.CLAIMED and (
            lease is None or lease_end - _aware(lease) >= LEASE_RENEWAL_STEP
        ):
            cursor.execute(
                "UPDATE streams_turn SET lease_expires_at = %s WHERE id = %s AND status = %s",
                [ops.adapt_datetimefield_value(lease_end), turn_id, TurnStatus.CLAIMED.value],
            )
        # Each chunk as the general path would place it: on the playhead, after the last.
        received_at = ops.adapt_datetimefield_value(now)
        playhead_s = _aware(playhead).timestamp() if playhead else None
        chunk_params: list[Any] = []
        payloads: list[dict[str, Any]] = []
        answers: list[dict[str, Any]] = []
        offset = emitted
        for chunk, size in zip(run, sizes, strict=True):
            start, playhead_s = advance_playhead(playhead_s, now.timestamp(), fmt.duration_s(size))
            chunk_params += [
                stream_pk,
                room_id,
                chunk.seq,
                chunk.data,
                size,
                received_at,
                offset,
                ops.adapt_datetimefield_value(datetime.fromtimestamp(start, tz=UTC)),
            ]
            payloads.append(
                {
                    "stream_id": chunk.stream_id,
                    "seq": chunk.seq,
                    "speaker": speaker,
                    "sample_rate_hz": rate,
                    "channels": channels,
                    "bytes_per_sample": width,
                    "playback_speed": speed,
                    "offset_ms": round(fmt.duration_s(offset) * 1000),
                }
            )
            offset += size
            total += size
            count += 1
            answers.append(
                {
                    "stream_id": chunk.stream_id,
                    "seq": chunk.seq,
                    "duplicate": False,
                    "received_bytes": total,
                    "received_chunks": count,
                    "done": False,
                    "status": StreamStatus.STREAMING.value,
                }
            )
        n = len(run)
        progress = [
            total,
            count,
            next_seq + n,
            offset,
            ops.adapt_datetimefield_value(datetime.fromtimestamp(playhead_s, tz=UTC)),
            stream_pk,
        ]
        if postgres:
            row_sql = "(%s, %s, %s, " + BINARY_PARAM + ", %s, %s, %s, %s)"
            sql = POSTGRES_RUN.format(
                rows=", ".join([row_sql] * n), events=", ".join(["(%s, %s)"] * n)
            )
            params = [*chunk_params, *progress, n, room_id]
            for payload in payloads:
                params += [payload["seq"], ops.adapt_json_value(payload, None)]
            params += [room_id, n - 1 + first.seq, received_at]
            with _postgres_cursor() as raw:
                raw.execute(sql, params)
                last_event_id = max(seq for (seq,) in raw.fetchall())
        else:
            cursor.execute(
                INSERT_CHUNKS.format(rows=", ".join(["(%s, %s, %s, %s, %s, %s, %s, %s)"] * n)),
                chunk_params,
            )
            chunk_ids = {seq: pk for pk, seq in cursor.fetchall()}
            cursor.execute(UPDATE_PROGRESS, progress)
            last_event_id = allocate_event_ids(room_id, n)
            first_event = last_event_id - n + 1
            rows = [
                (room_id, first_event + i, "audio_chunk", payload, chunk_ids[payload["seq"]], now)
                for i, payload in enumerate(payloads)
            ]
            insert_events(rows)
    messages = [
        audio_message(
            event_message(
                seq=last_event_id - n + 1 + i,
                room_name=first.room_name,
                type="audio_chunk",
                created_at=now,
                payload=payload,
            ),
            chunk.data,
        )
        for i, (chunk, payload) in enumerate(zip(run, payloads, strict=True))
    ]
    group = room_group(first.room_name)
    # One publish for the run: the events go out together, in order, after commit.
    transaction.on_commit(lambda: broadcast(group, messages))
    return answers


# What chunk_ingest changes on an open stream; a narrow UPDATE on the hot path.
STREAM_PROGRESS_FIELDS = [
    "status",
    "total_bytes",
    "chunk_count",
    "next_emit_seq",
    "emitted_bytes",
    "final_seq",
    "speech_text",
    "script",
    "word_marks",
    "playhead_at",
    "gap_deadline",
]
LEASE_RENEWAL_STEP = timedelta(seconds=1)


def _renew_lease(turn: Turn | None, now: datetime) -> None:
    """Push the lease out, at most once a second: a write per chunk buys nothing."""
    if turn is None or turn.status != TurnStatus.CLAIMED:
        return
    lease_end = now + timedelta(seconds=settings.PARLEY_TURN_LEASE_S)
    if turn.lease_expires_at and lease_end - turn.lease_expires_at < LEASE_RENEWAL_STEP:
        return
    Turn.objects.filter(pk=turn.pk, status=TurnStatus.CLAIMED).update(lease_expires_at=lease_end)


def existing_done_matches(stream: Stream, chunk: ChunkIn) -> bool:
    """A retry must say the same thing about being final as the original did."""
    if chunk.done:
        return stream.final_seq == chunk.seq
    return stream.final_seq != chunk.seq


def _check_seq_fits(stream: Stream, chunk: ChunkIn) -> None:
    if stream.final_seq is not None:
        if chunk.done:
            raise Conflict(
                "already_done",
                f"Stream {stream.stream_id!r} already ended at seq {stream.final_seq}.",
                field="done",
            )
        if chunk.seq > stream.final_seq:
            raise ApiError(
                "seq_after_final",
                f"seq {chunk.seq} is past the final seq {stream.final_seq} of this stream.",
                field="seq",
            )
    elif chunk.done:
        highest = (
            Chunk.objects.filter(stream=stream).order_by("-seq").values_list("seq", flat=True)
        ).first()
        if highest is not None and highest > chunk.seq:
            raise ApiError(
                "seq_before_received",
                f"The final chunk's seq {chunk.seq} is lower than seq {highest} already received.",
                field="seq",
            )


def _ack(stream: Stream, seq: int, *, duplicate: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "stream_id": stream.stream_id,
        "seq": seq,
        "duplicate": duplicate,
        "received_bytes": stream.total_bytes,
        "received_chunks": stream.chunk_count,
        "done": stream.final_seq is not None,
        "status": stream.status,
    }
    if stream.final_seq is not None:
        body["duration_ms"] = _duration_ms(stream)
        body["playback_ends_at"] = iso(stream.playback_ends_at)
        if stream.status == StreamStatus.AWAITING_GAPS:
            body.update(stream_missing(stream).as_answer())
    return body


# --- clock-driven transitions: called by timers and the sweeper, idempotent ----------------


def release_prepare(*, turn_id: Any) -> ReleasePlan | None:
    """Read what the release of a finalized turn will write (no lock, no write).

    None when the turn is no longer waiting for its release.
    """
    turn = (
        Turn.objects.filter(pk=turn_id, status=TurnStatus.FINALIZED)
        .select_related("room")
        .only("id", "speaker", "release_at", "room__id", "room__name")
        .first()
    )
    if turn is None or turn.release_at is None:
        return None
    stream = (
        Stream.objects.filter(turn_id=turn.pk, status=StreamStatus.PLAYING)
        .only("id", "stream_id", "speaker", "duration_ms", "total_bytes", "speech_text")
        .first()
    )
    return _plan_for(
        turn_id=turn.pk,
        release_at=turn.release_at,
        room=turn.room,
        stream=stream,
        speaker=turn.speaker,
    )


def release_commit(*, plan: ReleasePlan, skip_locked: bool = False) -> bool:
    """At the predicted end: the release's one short transaction. True if this call did it.

    Never early: a caller woken a moment before `release_at` (clocks round) waits it out.
    Whoever else released, expired or interrupted the turn meanwhile makes this a no-op.
    """
    wait = (plan.release_at - timezone.now()).total_seconds()
    if wait > 0:
        time.sleep(wait)
    now = timezone.now()
    with transaction.atomic():
        if connection.features.has_select_for_update:
            # The room first, as every write to a room does (no lock-order deadlocks).
            skip = " SKIP LOCKED" if skip_locked else ""
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT id FROM streams_room WHERE id = %s FOR UPDATE" + skip, [plan.room_id]
                )
                if cursor.fetchone() is None:
                    return False
        room = Room(pk=plan.room_id, name=plan.room_name)
        batch = EventBatch(room)
        released = _release(room, plan, batch, now)
        batch.flush()
        return released


def turn_release(*, turn_id: Any, skip_locked: bool = False) -> bool:
    """Release a finalized turn whose predicted end has come. True if this call released it.

    Sweepers pass skip_locked: a room another worker is writing to is left to that worker or
    to the next sweep, instead of queueing every sweeper behind it (PostgreSQL only).
    """
    plan = release_prepare(turn_id=turn_id)
    if plan is None or plan.release_at > timezone.now():
        return False
    return release_commit(plan=plan, skip_locked=skip_locked)


def turn_expire(*, turn_id: Any) -> bool:
    """Expire a claim whose lease ran out without audio. True if this call expired it."""
    now = timezone.now()
    with transaction.atomic():
        turn = Turn.objects.filter(pk=turn_id, status=TurnStatus.CLAIMED).first()
        if turn is None or turn.lease_expires_at is None or turn.lease_expires_at > now:
            return False
        room = Room.objects.select_for_update().get(pk=turn.room_id)
        matched = Turn.objects.filter(
            pk=turn_id, status=TurnStatus.CLAIMED, lease_expires_at__lte=now
        ).update(status=TurnStatus.EXPIRED, ended_at=now, reason="lease_expired")
        if matched != 1:
            return False
        turn.refresh_from_db()
        stream = _live_stream(turn)
        batch = EventBatch(room)
        if stream is not None:
            _publish_heard(batch, stream, _interrupt_stream(stream, now))
        _turn_changed(batch, turn)
        batch.add("state", room_state(room))
        batch.flush()
        return True


def stream_finalize_after_gap(*, stream_id: str) -> bool:
    """The gap timeout passed: finalize with the chunks that arrived and record the gap."""
    now = timezone.now()
    with transaction.atomic():
        stream = Stream.objects.filter(
            stream_id=stream_id, status=StreamStatus.AWAITING_GAPS
        ).first()
        if stream is None or stream.gap_deadline is None or stream.gap_deadline > now:
            return False
        room = Room.objects.select_for_update().get(pk=stream.room_id)
        stream.refresh_from_db()
        if stream.status != StreamStatus.AWAITING_GAPS:
            return False
        batch = EventBatch(room)
        _publish_buffered(stream, batch, now, skip_gaps=True)
        _finalize(stream, room, batch, now)
        batch.flush()
        return True


def turn_force_release(*, turn_id: Any) -> bool:
    """Admin action: end an active turn now, as a moderator would."""
    turn = Turn.objects.filter(pk=turn_id, status__in=ACTIVE_TURN_STATUSES).first()
    if turn is None:
        return False
    floor_yield(room_name=turn.room.name, speaker=None, force=True)
    return True
