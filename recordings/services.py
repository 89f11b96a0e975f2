"""Every write of a recording session; both socket adapters and the HTTP views call these.

Keyword-only functions named <entity>_<action>. A chunk is committed before the caller
acknowledges it, so an acknowledged chunk survives any crash; the WAV file is only a cache
of the chunks and can always be rebuilt from them (force stop does exactly that).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from recordings.formats import MAX_ENCODED_BYTES_PER_S, PCM, RecordingFormat
from recordings.models import Recording, RecordingStatus
from recordings.wavfile import DecodeError, WavInfo, decode_to_wav, write_pcm_wav
from streams.audio import PcmFormat
from streams.errors import ApiError, Conflict
from streams.events import EventBatch
from streams.models import Chunk, Room, Stream, StreamKind, StreamStatus
from streams.services import (
    chunk_publish,
    validate_room_name,
    validate_speaker,
    validate_stream_id,
)

logger = logging.getLogger(__name__)
_RECORDING = Recording._meta.db_table
_STREAM = Stream._meta.db_table
_CHUNK = Chunk._meta.db_table


class InvalidStreamingKey(ApiError):
    seed_message = "Invalid streaming key"

    def __init__(self) -> None:
        super().__init__("invalid_streaming_key", self.seed_message, field="streaming_key")


class EmptyBuffer(ApiError):
    seed_message = "Audio buffer is empty"

    def __init__(self) -> None:
        super().__init__("empty_buffer", self.seed_message)


class ProcessingFailed(ApiError):
    seed_message = "Failed to process audio"

    def __init__(self, reason: str) -> None:
        super().__init__(
            "processing_failed",
            f"{self.seed_message}: {reason}. The audio is kept; force stop retries.",
            status_code=500,
        )


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def recording_format(recording: Recording) -> RecordingFormat:
    stream = recording.stream
    return RecordingFormat(
        container=recording.container,
        pcm=stream.pcm_format,
        decode_rate_hz=recording.decode_rate_hz,
        decode_channels=recording.decode_channels,
    )


def recording_path(sid: str) -> Path:
    return Path(settings.PARLEY_RECORDINGS_DIR) / f"{sid}.wav"


def live_stream_id(sid: str) -> str:
    return f"{sid}:live"


def recording_open(
    *,
    sid: str,
    transport: str,
    fmt: RecordingFormat,
    base_url: str,
    speaker: str,
    room_name: str | None = None,
    channel_name: str = "",
) -> tuple[Recording, str]:
    """Allocate a session's buffer: a recording Stream. Returns it and its streaming key."""
    validate_stream_id(sid)
    validate_speaker(speaker)
    if room_name is not None:
        validate_room_name(room_name)
    key = secrets.token_urlsafe(24)
    try:
        with transaction.atomic():
            room, _ = Room.objects.get_or_create(name=room_name or settings.PARLEY_RECORDINGS_ROOM)
            stream = Stream.objects.create(
                stream_id=sid,
                kind=StreamKind.RECORDING,
                room=room,
                speaker=speaker,
                sample_rate_hz=fmt.pcm.sample_rate_hz,
                channels=fmt.pcm.channels,
                bytes_per_sample=fmt.pcm.bytes_per_sample,
            )
            live = None
            if room_name is not None and not fmt.is_pcm:
                # The room hears decoded PCM (recordings/live.py), in a stream of its own.
                live_fmt = fmt.live_pcm
                live = Stream.objects.create(
                    stream_id=live_stream_id(sid),
                    kind=StreamKind.RECORDING,
                    room=room,
                    speaker=speaker,
                    sample_rate_hz=live_fmt.sample_rate_hz,
                    channels=live_fmt.channels,
                    bytes_per_sample=live_fmt.bytes_per_sample,
                )
            recording = Recording.objects.create(
                stream=stream,
                live_stream=live,
                key_hash=key_hash(key),
                transport=transport,
                channel_name=channel_name,
                container=fmt.container,
                decode_rate_hz=fmt.decode_rate_hz,
                decode_channels=fmt.decode_channels,
                broadcast=room_name is not None,
                base_url=base_url,
            )
    except IntegrityError as exc:
        raise Conflict(
            "stream_id_conflict", f"A stream {sid!r} already exists.", field="streaming_id"
        ) from exc
    return recording, key


@dataclass(frozen=True)
class ChunkAck:
    seq: int
    received_bytes: int
    received_chunks: int


@dataclass(frozen=True)
class ChunkIn:
    """One chunk a session hands to the group commit: its recording and its bytes."""

    recording_id: int
    data: bytes


@dataclass
class _Head:
    """What the chunk path needs of a recording, read in one narrow locking query; the
    counts advance as the group's chunks of this recording are taken."""

    status: str
    broadcast: bool
    container: str
    stream_pk: int
    sid: str
    chunk_count: int
    total_bytes: int
    fmt: PcmFormat
    first_seq: int = 0  # chunk_count when locked: the group's first chunk of this recording
    room_pk: int = 0  # the stream's room (chunk rows carry it)

    @classmethod
    def lock_many(cls, recording_ids: list[int]) -> dict[int, _Head]:
        """Lock the recording rows (in id order: two groups never wait on each other in a
        cycle) and read each one's stream counts. Missing ids are absent from the answer."""
        lock = " FOR UPDATE OF r" if connection.features.has_select_for_update_of else ""
        ids = sorted(set(recording_ids))
        marks = ", ".join(["%s"] * len(ids))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT r.id, r.status, r.broadcast, r.container, s.id, s.stream_id, "
                "s.chunk_count, s.total_bytes, s.sample_rate_hz, s.channels, s.bytes_per_sample, "
                "s.room_id "
                f"FROM {_RECORDING} r JOIN {_STREAM} s ON s.id = r.stream_id "
                f"WHERE r.id IN ({marks}) ORDER BY r.id" + lock,
                ids,
            )
            rows = cursor.fetchall()
        heads = {}
        for recording_id, *head, rate, channels, width, room_pk in rows:
            head[1] = bool(head[1])  # SQLite answers 0/1
            heads[recording_id] = cls(
                *head, fmt=PcmFormat(rate, channels, width), first_seq=head[5], room_pk=room_pk
            )
        return heads


def _check_chunk(head: _Head, data: bytes) -> None:
    if head.status != RecordingStatus.RECORDING:
        raise Conflict(
            "recording_stopped",
            f"Recording {head.sid!r} is {head.status}; it takes no more audio.",
        )
    pcm = head.container == PCM
    if pcm and len(data) % head.fmt.frame_bytes:
        raise ApiError(
            "partial_frame",
            f"The chunk is {len(data)} bytes, not a whole number of {head.fmt.frame_bytes}-byte "
            f"frames ({head.fmt.channels} channel(s) x {head.fmt.bytes_per_sample} bytes).",
            field="chunk",
        )
    max_s = settings.PARLEY_MAX_RECORDING_S
    budget = head.fmt.bytes_for(max_s) if pcm else int(max_s * MAX_ENCODED_BYTES_PER_S)
    if head.total_bytes + len(data) > budget:
        raise ApiError(
            "recording_too_long",
            f"This chunk would take the recording past PARLEY_MAX_RECORDING_S ({max_s:g} s); "
            "stop it and start another.",
            field="chunk",
            status_code=413,
        )


def check_chunk_size(data: bytes) -> None:
    """Size rules that need no database: refused before anything is locked."""
    if not data:
        raise ApiError("empty_chunk", "The chunk is empty.", field="chunk")
    limit = settings.PARLEY_MAX_CHUNK_BYTES
    if len(data) > limit:
        raise ApiError(
            "chunk_too_large",
            f"A chunk may carry at most {limit} bytes; this one has {len(data)}.",
            field="chunk",
            status_code=413,
        )


class RecordingGone(Exception):
    """The chunk's recording row no longer exists (deleted under the session)."""


def recording_chunks_add(chunks: list[ChunkIn]) -> list[ChunkAck | ApiError | RecordingGone]:
    """Store several chunks, of one or many recordings, in one transaction (group commit).

    Answers, in the order given: a ChunkAck for each stored chunk, the ApiError that refused
    a chunk (`empty_chunk`, `chunk_too_large`, `recording_stopped`, `partial_frame`,
    `recording_too_long`; the others are stored all the same), or RecordingGone. The answers
    are only true once this returns, i.e. once the group is committed; a database error
    fails the whole group (raised, nothing of it stored). Chunks of one recording keep
    their order: seq follows the list.

    The hot path of a recording, in narrow SQL whatever the group's size: one locking
    SELECT of every recording in it, one batched INSERT of the chunks, one batched UPDATE of
    the streams' counts, one commit. (A PCM recording broadcast to a room goes through the
    core's publisher, chunk by chunk, for its events.)
    """
    answers: list[ChunkAck | ApiError | RecordingGone] = []
    now = timezone.now()
    received_at = connection.ops.adapt_datetimefield_value(now)
    rows: list[tuple] = []
    with transaction.atomic():
        heads = _Head.lock_many([chunk.recording_id for chunk in chunks])
        for chunk in chunks:
            head = heads.get(chunk.recording_id)
            if head is None:
                answers.append(RecordingGone(chunk.recording_id))
                continue
            data = chunk.data
            try:
                check_chunk_size(data)
                _check_chunk(head, data)
            except ApiError as refused:
                answers.append(refused)
                continue
            if head.broadcast and head.container == PCM:
                _add_broadcast(head.stream_pk, data, now)
            else:
                rows.append(
                    (head.stream_pk, head.room_pk, head.chunk_count, data, len(data), received_at)
                )
            answers.append(
                ChunkAck(head.chunk_count, head.total_bytes + len(data), head.chunk_count + 1)
            )
            head.chunk_count += 1
            head.total_bytes += len(data)
        with connection.cursor() as cursor:
            if rows:
                cursor.executemany(
                    f"INSERT INTO {_CHUNK} (stream_id, room_id, seq, data, size, received_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    rows,
                )
            progress = [
                (head.chunk_count, head.total_bytes, received_at, head.stream_pk)
                for head in heads.values()
                if head.chunk_count != head.first_seq
                and not (head.broadcast and head.container == PCM)
            ]
            if progress:
                cursor.executemany(
                    f"UPDATE {_STREAM} SET chunk_count = %s, total_bytes = %s, "
                    "first_arrival_at = COALESCE(first_arrival_at, %s) WHERE id = %s",
                    progress,
                )
    return answers


def recording_chunk_add(*, recording_id: int, data: bytes) -> ChunkAck:
    """Store one chunk durably (committed on return): a group of one. Raises its ApiError."""
    (answer,) = recording_chunks_add([ChunkIn(recording_id, data)])
    if isinstance(answer, RecordingGone):
        raise Recording.DoesNotExist(recording_id)
    if isinstance(answer, ApiError):
        raise answer
    return answer


def _add_broadcast(stream_pk: int, data: bytes, now: datetime) -> None:
    """The chunk, plus its audio_chunk event in the room's log (the same transaction)."""
    _publish(Stream.objects.select_related("room").get(pk=stream_pk), data, now)


def recording_live_publish(*, stream_pk: int, data: bytes) -> int:
    """A container recording's decoded PCM: the next chunk of its live stream, broadcast to
    the room exactly like a PCM recording's chunk. Called by the session's one decoder, in
    order. Returns the chunk's seq."""
    now = timezone.now()
    with transaction.atomic():
        # Locked against the stop that ends the stream (recording_live_end).
        stream = (
            Stream.objects.select_related("room").select_for_update(of=("self",)).get(pk=stream_pk)
        )
        seq = stream.chunk_count
        _publish(stream, data, now)
    return seq


def recording_live_end(*, stream_pk: int, now: datetime | None = None) -> None:
    """End a live stream as a PCM recording's stream ends (played, with its duration).

    Every stop path calls it (in recording_stop): the session's own stop after flushing its
    decoder, force stop from any worker, the idle timeout, the abandoned-recordings sweep.
    """
    now = now or timezone.now()
    with transaction.atomic():
        stream = (
            Stream.objects.select_for_update()
            .filter(pk=stream_pk, status=StreamStatus.STREAMING)
            .first()
        )
        if stream is None:
            return
        stream.status = StreamStatus.PLAYED
        stream.finalized_at = stream.ended_at = now
        stream.duration_ms = _duration_ms(stream)
        stream.save(update_fields=["status", "finalized_at", "ended_at", "duration_ms"])


def _duration_ms(stream: Stream) -> int:
    return round(stream.pcm_format.duration_s(stream.total_bytes) * 1000)


def _publish(stream: Stream, data: bytes, now: datetime) -> None:
    chunk = Chunk(
        stream=stream,
        room_id=stream.room_id,
        seq=stream.chunk_count,
        data=data,
        size=len(data),
        received_at=now,
    )
    batch = EventBatch(stream.room)
    # The core's own audio_chunk publisher: one event shape and one playhead for every stream.
    chunk_publish(stream, chunk, batch, now)
    chunk.save(force_insert=True)
    stream.total_bytes += chunk.size
    stream.chunk_count += 1
    stream.first_arrival_at = stream.first_arrival_at or now
    fields = [
        "total_bytes",
        "chunk_count",
        "first_arrival_at",
        "playhead_at",
        "emitted_bytes",
        "next_emit_seq",
    ]
    if stream.status != StreamStatus.STREAMING:
        # A live stream's tail, decoded after a force stop ended it: its duration grows.
        stream.duration_ms = _duration_ms(stream)
        fields.append("duration_ms")
    stream.save(update_fields=fields)
    batch.flush()


def _pieces(stream_pk: int) -> Iterator[bytes]:
    rows = (
        Chunk.objects.filter(stream_id=stream_pk)
        .order_by("seq")
        .values_list("data", flat=True)
        .iterator(chunk_size=64)
    )
    for data in rows:
        yield bytes(data)


def recording_stop(*, recording_id: int, refuse_empty: bool = True) -> Recording:
    """Stop taking audio and build the WAV file from the stored chunks.

    Idempotent: a complete recording whose file exists is returned as is; a failed one, or
    one whose file is missing (another machine built it, or a crash came between), is built
    again. With no chunk at all it raises EmptyBuffer and keeps recording, unless
    `refuse_empty` is false (the client is gone): then it ends as "empty".
    """
    now = timezone.now()
    with transaction.atomic():
        recording = Recording.objects.select_for_update().get(pk=recording_id)
        # Read after the lock, in its own statement: a chunk committed while we waited counts.
        stream = recording.stream
        if recording.status == RecordingStatus.EMPTY:
            return recording
        if stream.chunk_count == 0:
            if refuse_empty:
                raise EmptyBuffer()
            recording.status = RecordingStatus.EMPTY
            recording.stopped_at = now
            recording.save(update_fields=["status", "stopped_at"])
            Stream.objects.filter(pk=stream.pk).update(status=StreamStatus.PLAYED, ended_at=now)
            if recording.live_stream_id:
                recording_live_end(stream_pk=recording.live_stream_id, now=now)
            return recording
        if (
            recording.status == RecordingStatus.COMPLETE
            and recording_path(stream.stream_id).exists()
        ):
            return recording
        if recording.status == RecordingStatus.RECORDING:
            recording.status = RecordingStatus.PROCESSING
            recording.stopped_at = now
            recording.save(update_fields=["status", "stopped_at"])
            if recording.live_stream_id:
                # Taking no more audio: the room's live stream ends now, not when the file is.
                recording_live_end(stream_pk=recording.live_stream_id, now=now)
    # Outside the transaction: decoding may take seconds and must not hold the lock.
    return _build(recording)


def recording_discard_empty(*, recording_id: int) -> bool:
    """Delete a recording that ended before its first chunk, with its streams; True if it
    was. A session without audio leaves no record (a churn of empty connections would
    otherwise leave one row per connection). Its streams have no chunk and no event."""
    with transaction.atomic():
        recording = Recording.objects.select_for_update().filter(pk=recording_id).first()
        if recording is None:
            return True
        if recording.status not in (RecordingStatus.RECORDING, RecordingStatus.EMPTY):
            return False
        if Stream.objects.filter(pk=recording.stream_id, chunk_count__gt=0).exists():
            return False
        streams = [recording.stream_id, recording.live_stream_id]
        recording.delete()
        Stream.objects.filter(pk__in=[pk for pk in streams if pk is not None]).delete()
    return True


def _build(recording: Recording) -> Recording:
    stream = recording.stream
    fmt = recording_format(recording)
    path = recording_path(stream.stream_id)
    try:
        if fmt.container == PCM:
            info: WavInfo = write_pcm_wav(_pieces(stream.pk), fmt.pcm, path)
        else:
            info = decode_to_wav(
                _pieces(stream.pk), fmt, path, max_s=settings.PARLEY_MAX_RECORDING_S
            )
    except (DecodeError, OSError) as exc:
        logger.warning("recording %s: building the file failed: %s", stream.stream_id, exc)
        Recording.objects.filter(pk=recording.pk).exclude(status=RecordingStatus.COMPLETE).update(
            status=RecordingStatus.FAILED, error=str(exc)[:2000]
        )
        Stream.objects.filter(pk=stream.pk, status=StreamStatus.STREAMING).update(
            status=StreamStatus.INTERRUPTED, ended_at=timezone.now()
        )
        raise ProcessingFailed(str(exc)) from exc
    now = timezone.now()
    with transaction.atomic():
        Recording.objects.filter(pk=recording.pk).update(
            status=RecordingStatus.COMPLETE,
            error="",
            completed_at=now,
            wav_sample_rate_hz=info.fmt.sample_rate_hz,
            wav_channels=info.fmt.channels,
            wav_bytes_per_sample=info.fmt.bytes_per_sample,
            file_bytes=info.file_bytes,
            duration_ms=info.duration_ms,
        )
        # The core's view of the stream: ended normally, with the saved duration.
        Stream.objects.filter(pk=stream.pk).update(
            status=StreamStatus.PLAYED,
            finalized_at=now,
            ended_at=now,
            duration_ms=info.duration_ms,
        )
    # Fresh, with its stream: callers read both off the loop's thread, where lazy loads fail.
    return Recording.objects.select_related("stream").get(pk=recording.pk)


def recording_for_key(*, key: str | None) -> Recording:
    recording = None
    if isinstance(key, str) and key:
        recording = (
            Recording.objects.select_related("stream").filter(key_hash=key_hash(key)).first()
        )
    if recording is None:
        raise InvalidStreamingKey()
    return recording


def recording_force_stop(*, key: str | None) -> Recording:
    """POST /streaming/force_stop: stop the session holding `key` and build its file."""
    return recording_stop(recording_id=recording_for_key(key=key).pk)


def recording_ensure_file(*, recording: Recording) -> Path:
    """The saved file, rebuilt from the chunks if this machine does not have it."""
    path = recording_path(recording.stream.stream_id)
    if not path.exists():
        _build(recording)
    return path


def recordings_finish_abandoned(*, idle_s: float) -> int:
    """Save recordings whose worker died: nothing received for twice the idle timeout.

    A live session is saved by its own worker after `idle_s`, so one still recording at
    twice that has lost its worker. Returns how many were saved (or failed to decode).
    """
    cutoff = timezone.now() - timedelta(seconds=2 * idle_s)
    last_chunk = Chunk.objects.filter(
        stream=OuterRef("stream"), seq=OuterRef("stream__chunk_count") - 1
    ).values("received_at")[:1]
    abandoned = (
        Recording.objects.filter(status__in=[RecordingStatus.RECORDING, RecordingStatus.PROCESSING])
        .annotate(last=Coalesce(Subquery(last_chunk), "stopped_at", "created_at"))
        .filter(last__lt=cutoff)
        .values_list("pk", flat=True)
    )
    saved = 0
    for recording_id in list(abandoned[:100]):
        if recording_discard_empty(recording_id=recording_id):
            continue
        with contextlib.suppress(ApiError):  # a failure is kept as failed, with its chunks
            recording_stop(recording_id=recording_id, refuse_empty=False)
        saved += 1
    return saved
