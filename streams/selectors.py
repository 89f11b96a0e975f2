"""Reads: room snapshots, stream details, the event log. No writes here."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from streams.audio import heard_seconds
from streams.events import hydrate, iso
from streams.gaps import MAX_LISTED, Gaps, gaps_in
from streams.models import (
    ACTIVE_TURN_STATUSES,
    Chunk,
    Room,
    RoomEvent,
    SpectatorPresence,
    Stream,
    StreamStatus,
    Turn,
)


def active_turn(room: Room) -> Turn | None:
    return room.turns.filter(status__in=ACTIVE_TURN_STATUSES).first()


def turn_as_dict(turn: Turn) -> dict[str, Any]:
    return {
        "turn_id": str(turn.id),
        "speaker": turn.speaker,
        "status": turn.status,
        "reason": turn.reason,
        "claimed_at": iso(turn.claimed_at),
        "lease_expires_at": iso(turn.lease_expires_at),
        "expected_release_at": iso(turn.release_at),
    }


def stream_heard_ms(stream: Stream, now: datetime | None = None) -> int:
    """Milliseconds a listener has heard by `now`, from each published chunk's playhead span."""
    now = now or timezone.now()
    fmt = stream.pcm_format
    spans = [
        (start.timestamp(), fmt.duration_s(size))
        for start, size in Chunk.objects.filter(
            stream=stream, play_start_at__isnull=False
        ).values_list("play_start_at", "size")
    ]
    return round(heard_seconds(spans, now.timestamp()) * 1000)


def stream_duration_ms(stream: Stream) -> int:
    return round(stream.pcm_format.duration_s(stream.total_bytes) * 1000)


def stream_missing(stream: Stream) -> Gaps:
    """The seqs a stream lacks below its final (or, while open, its highest) seq: the first
    gaps.MAX_LISTED ranges and the exact count, whatever the seqs.

    A finalized stream's are stored (what the gap timeout skipped). Otherwise they are
    read from the chunks: those below `next_emit_seq` are all there (published in order),
    so only the buffered ones above it are read, and only up to the last range listed.
    """
    if stream.missing_count or stream.status in (StreamStatus.PLAYING, StreamStatus.PLAYED):
        return Gaps(ranges=list(stream.missing_ranges), count=stream.missing_count)
    buffered = Chunk.objects.filter(stream=stream, seq__gte=stream.next_emit_seq)
    end = stream.final_seq
    if end is None:
        end = buffered.order_by("-seq").values_list("seq", flat=True).first()
    if end is None or end < stream.next_emit_seq:
        return Gaps()
    seqs = buffered.order_by("seq").values_list("seq", flat=True)
    return gaps_in(
        seqs.iterator(chunk_size=MAX_LISTED + 1),
        start=stream.next_emit_seq,
        end=end,
        # Every chunk is at or below `end`: the rest of start..end is missing.
        count=max(0, end + 1 - stream.chunk_count),
    )


def stream_as_dict(stream: Stream) -> dict[str, Any]:
    return {
        "stream_id": stream.stream_id,
        "kind": stream.kind,
        "room": stream.room.name,
        "speaker": stream.speaker,
        "turn_id": str(stream.turn_id) if stream.turn_id else None,
        "status": stream.status,
        "sample_rate_hz": stream.sample_rate_hz,
        "channels": stream.channels,
        "bytes_per_sample": stream.bytes_per_sample,
        "playback_speed": stream.playback_speed,
        "bytes": stream.total_bytes,
        "chunks": stream.chunk_count,
        "duration_ms": stream_duration_ms(stream),
        **stream_missing(stream).as_answer(),
        "playback_ends_at": iso(stream.playback_ends_at),
        "heard_ms": stream.heard_ms,
        # The text is published when playback ends (or is cut), never before: a spectator
        # polling this endpoint must not read what has not been said yet.
        "speech_text": stream.speech_text if stream.ended_at is not None else None,
        # The whole text as sent; differs from speech_text when the stream was cut off.
        "script": stream.script if stream.ended_at is not None else None,
        "created_at": iso(stream.created_at),
        "finalized_at": iso(stream.finalized_at),
        "ended_at": iso(stream.ended_at),
    }


def spectator_count(room: Room) -> int:
    return SpectatorPresence.objects.filter(room=room).count()


def free_floor_state(*, spectators: int, last_event_id: int) -> dict[str, Any]:
    """The `state` body of a room nobody holds (known without a query after a release)."""
    return {
        "speaker": None,
        "turn": None,
        "stream": None,
        "spectators": spectators,
        "last_event_id": last_event_id,
    }


def room_state(room: Room) -> dict[str, Any]:
    """The `state` event's body: who holds the floor, what is playing, who is watching."""
    turn = active_turn(room)
    if turn is None:
        return free_floor_state(spectators=spectator_count(room), last_event_id=room.last_event_id)
    stream_body = None
    stream = (
        Stream.objects.filter(turn=turn)
        .exclude(status__in=[StreamStatus.PLAYED, StreamStatus.INTERRUPTED])
        .first()
    )
    if stream is not None:
        stream_body = {
            "stream_id": stream.stream_id,
            "speaker": stream.speaker,
            "status": stream.status,
            "sample_rate_hz": stream.sample_rate_hz,
            "channels": stream.channels,
            "bytes_per_sample": stream.bytes_per_sample,
            "playback_speed": stream.playback_speed,
            "bytes": stream.total_bytes,
            "chunks": stream.chunk_count,
            "duration_ms": stream_duration_ms(stream),
            "playhead_ms": stream_heard_ms(stream),
            "playback_ends_at": iso(stream.playback_ends_at),
        }
    return {
        "speaker": turn.speaker,
        "turn": turn_as_dict(turn),
        "stream": stream_body,
        "spectators": spectator_count(room),
        "last_event_id": room.last_event_id,
    }


def room_snapshot(room_name: str) -> dict[str, Any]:
    """GET /api/rooms/{room}: the same shape as a `state` event."""
    room = Room.objects.filter(name=room_name).first()
    if room is None:
        return {
            "type": "state",
            "id": 0,
            "room": room_name,
            "ts": iso(timezone.now()),
            "speaker": None,
            "turn": None,
            "stream": None,
            "spectators": 0,
            "last_event_id": 0,
        }
    return {
        "type": "state",
        "id": room.last_event_id,
        "room": room.name,
        "ts": iso(timezone.now()),
        **room_state(room),
    }


EVENT_PAGE = 500
# A page also stops once it carries this much audio: 500 chunks of up to 1 MiB each would
# be hundreds of MB of JSON built in memory.
EVENT_PAGE_AUDIO_BYTES = 4 * 1024 * 1024


def _page(
    events: QuerySet[RoomEvent], room_name: str, *, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of `events` (filtered, unordered) in id order: at most `limit` events, and no
    more once it carries EVENT_PAGE_AUDIO_BYTES of audio. Returns (page, more).

    The events are read without their audio, and only the page's chunks are read with it:
    a page costs at most the budget plus one chunk in memory, not `limit` chunks.
    """
    rows = list(events.select_related("chunk").defer("chunk__data").order_by("seq")[: limit + 1])
    more = len(rows) > limit
    rows = rows[:limit]
    audio_bytes = 0
    for index, event in enumerate(rows):
        if index and audio_bytes >= EVENT_PAGE_AUDIO_BYTES:
            rows, more = rows[:index], True
            break
        if event.chunk is not None:
            audio_bytes += event.chunk.size
    wanted = [e.chunk_id for e in rows if e.type == "audio_chunk" and e.chunk_id is not None]
    if wanted:
        data = dict(Chunk.objects.filter(pk__in=wanted).values_list("pk", "data"))
        for event in rows:
            if event.chunk_id in data:
                event.chunk.data = data.pop(event.chunk_id)  # no query per event in hydrate
    return [hydrate(event, room_name) for event in rows], more


def events_after(
    room: Room,
    *,
    after: int,
    types: list[str] | None = None,
    up_to: int | None = None,
    limit: int = EVENT_PAGE,
) -> tuple[list[dict[str, Any]], bool]:
    """Stored events with after < id (<= up_to), in order, audio bytes included.

    Returns (page, more): `more` is True when the page stopped at its count or audio budget
    before the end, so the caller must not skip past its last id.
    """
    queryset = RoomEvent.objects.filter(room=room, seq__gt=after)
    if up_to is not None:
        queryset = queryset.filter(seq__lte=up_to)
    if types:
        queryset = queryset.filter(type__in=types)
    return _page(queryset, room.name, limit=limit)


def active_stream_id(room: Room) -> int | None:
    """The pk of the stream now playing (or still streaming) on the room's floor, if any."""
    turn = active_turn(room)
    if turn is None:
        return None
    return (
        Stream.objects.filter(turn=turn)
        .exclude(status=StreamStatus.INTERRUPTED)
        .values_list("pk", flat=True)
        .first()
    )


def audio_events_after(
    room: Room, *, streams: list[int], after: int, up_to: int, limit: int = EVENT_PAGE
) -> tuple[list[dict[str, Any]], bool]:
    """A late joiner's audio so far, one page: the audio_chunk events of `streams` (pks)
    with after < id <= up_to, in id order, paged like events_after. Returns (page, more)."""
    events = RoomEvent.objects.filter(
        room=room, type="audio_chunk", chunk__stream__in=streams, seq__gt=after, seq__lte=up_to
    )
    return _page(events, room.name, limit=limit)


# Streams whose audio is arriving or playing: a room with one is live even when nobody holds
# its floor (a recording takes no turn).
LIVE_STREAM_STATUSES = (StreamStatus.STREAMING, StreamStatus.AWAITING_GAPS, StreamStatus.PLAYING)

# GET /api/rooms `ordering` values and the order_by each stands for (ids break ties, so a
# page boundary never shows a room twice or skips one).
ROOM_ORDERINGS: dict[str, tuple[str, ...]] = {
    "-last_activity_at": ("-last_activity_at", "-id"),
    "last_activity_at": ("last_activity_at", "id"),
    "room": ("name",),
    "-room": ("-name",),
}


def rooms_listed(
    *,
    active: bool | None = None,
    since: datetime | None = None,
    ordering: str = "-last_activity_at",
) -> QuerySet[Room]:
    """GET /api/rooms: rooms annotated with `last_activity_at` (the time of their last event,
    else their creation), `spectator_count` (open spectator sockets), `floor_held` and
    `playing` (a stream is live), filtered and ordered.

    `active` keeps only active (True) or idle (False) rooms; `since` only rooms with activity
    at or after that aware datetime; `ordering` is a key of ROOM_ORDERINGS (KeyError otherwise:
    the caller validates it). Each annotation is a subquery on an indexed lookup (the last
    event by its unique (room, seq), presence by room, turns and streams by room and status).
    """
    last_event_at = RoomEvent.objects.filter(
        room=OuterRef("pk"), seq=OuterRef("last_event_id")
    ).values("created_at")[:1]
    spectators = (
        SpectatorPresence.objects.filter(room=OuterRef("pk"))
        .order_by()
        .values("room")
        .annotate(count=Count("pk"))
        .values("count")
    )
    floor_held = Exists(Turn.objects.filter(room=OuterRef("pk"), status__in=ACTIVE_TURN_STATUSES))
    playing = Exists(Stream.objects.filter(room=OuterRef("pk"), status__in=LIVE_STREAM_STATUSES))
    rooms = Room.objects.annotate(
        last_activity_at=Coalesce(Subquery(last_event_at), F("created_at")),
        spectator_count=Coalesce(Subquery(spectators), 0),
        floor_held=floor_held,
        playing=playing,
    )
    if active is True:
        rooms = rooms.filter(Q(floor_held=True) | Q(playing=True))
    elif active is False:
        rooms = rooms.filter(floor_held=False, playing=False)
    if since is not None:
        rooms = rooms.filter(last_activity_at__gte=since)
    return rooms.order_by(*ROOM_ORDERINGS[ordering])


def room_summaries(rooms: Sequence[Room]) -> list[dict[str, Any]]:
    """The GET /api/rooms items of rooms from `rooms_listed` (a page of them), in their order:
    `{room, active, speaker, turn, stream, spectators, last_event_id, last_activity_at,
    created_at}`. `turn` is the active turn (turn_as_dict) or None; `stream` the live stream
    (`{stream_id, kind, speaker, status}`: the floor holder's if any, else the newest) or None.
    Two queries for the whole page, whatever its size."""
    ids = [room.pk for room in rooms]
    turns = {
        turn.room_id: turn
        for turn in Turn.objects.filter(room_id__in=ids, status__in=ACTIVE_TURN_STATUSES)
    }
    streams: dict[int, Stream] = {}
    live = Stream.objects.filter(room_id__in=ids, status__in=LIVE_STREAM_STATUSES).order_by(
        "created_at", "id"
    )
    for stream in live:
        current = streams.get(stream.room_id)
        holder = turns.get(stream.room_id)
        # The newest live stream wins, except over the floor holder's own.
        if current is None or holder is None or current.turn_id != holder.pk:
            streams[stream.room_id] = stream
    items = []
    for room in rooms:
        turn = turns.get(room.pk)
        stream = streams.get(room.pk)
        items.append(
            {
                "room": room.name,
                "active": turn is not None or stream is not None,
                "speaker": turn.speaker if turn is not None else None,
                "turn": turn_as_dict(turn) if turn is not None else None,
                "stream": (
                    {
                        "stream_id": stream.stream_id,
                        "kind": stream.kind,
                        "speaker": stream.speaker,
                        "status": stream.status,
                    }
                    if stream is not None
                    else None
                ),
                "spectators": room.spectator_count,
                "last_event_id": room.last_event_id,
                "last_activity_at": iso(room.last_activity_at),
                "created_at": iso(room.created_at),
            }
        )
    return items


def stale_presence_cutoff(stale_s: float) -> datetime:
    return timezone.now() - timedelta(seconds=stale_s)
