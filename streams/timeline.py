"""A room's timeline for people (the admin): turns → their streams → their events, in order.

A read, like streams/selectors.py: one page of the room's event log (the newest `limit`
events before `before`), grouped by the turn each event belongs to, and within a turn by the
stream it carries. Events name their turn (`turn_id`, or a state's `turn.turn_id`) or their
stream (`stream_id`, whose turn is the stream's); the rest (a state with the floor free) belong
with the event before them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from streams.models import Room, RoomEvent, Stream, Turn

PAGE_EVENTS = 500


def clock(moment: datetime | None) -> str:
    """`HH:MM:SS.mmm` (UTC, like every time the API gives), or "-"."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


@dataclass
class TimelineEvent:
    seq: int
    type: str
    at: datetime
    offset_ms: int  # since the start of its group (the turn's claim, or its first event)
    speaker: str
    name: str  # an input's name (SpeechFinished, AudioEnded, …), else ""
    text: str  # what a person reads: the speech, a turn's status, a chunk's place

    @property
    def clock(self) -> str:
        return clock(self.at)


@dataclass
class TimelineStream:
    stream: Stream | None  # None: a stream_id no longer (or never) stored
    stream_id: str
    events: list[TimelineEvent] = field(default_factory=list)


@dataclass
class TimelineGroup:
    turn: Turn | None  # None: events of no turn (recordings, the room's first state)
    started_at: datetime
    items: list[TimelineEvent | TimelineStream] = field(default_factory=list)

    @property
    def clock(self) -> str:
        return clock(self.started_at)

    @property
    def date(self) -> str:
        return self.started_at.astimezone(UTC).strftime("%Y-%m-%d")

    @property
    def streams(self) -> list[TimelineStream]:
        return [item for item in self.items if isinstance(item, TimelineStream)]


@dataclass
class Timeline:
    groups: list[TimelineGroup]
    first_seq: int | None  # the page's oldest event; pass as `before` for the page before
    last_seq: int | None
    has_older: bool


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def _turn_id(payload: dict[str, Any]) -> uuid.UUID | None:
    if payload.get("turn_id"):
        return _uuid(payload["turn_id"])
    turn = payload.get("turn")
    return _uuid(turn.get("turn_id")) if isinstance(turn, dict) and turn.get("turn_id") else None


def _text(event: RoomEvent) -> str:
    payload = event.payload
    kind = event.type
    if kind == "audio_chunk":
        size = event.chunk.size if event.chunk_id is not None else 0
        return f"#{payload.get('seq')} at {payload.get('offset_ms')} ms, {size} bytes"
    if kind == "speech":
        cut = f" (cut at {payload.get('heard_ms')} ms)" if payload.get("interrupted") else ""
        return f"{payload.get('text', '')}{cut}"
    if kind == "playback_done":
        return f"played {payload.get('duration_ms')} ms"
    if kind == "turn":
        return f"{payload.get('status')} ({payload.get('reason')})"
    if kind == "state":
        turn = payload.get("turn") or {}
        holder = turn.get("speaker") if isinstance(turn, dict) else None
        spectators = payload.get("spectators", 0)
        return (f"floor held by {holder}" if holder else "floor free") + f", {spectators} watching"
    return ""


def room_timeline(*, room: Room, before: int | None = None, limit: int = PAGE_EVENTS) -> Timeline:
    """The newest `limit` events of `room` with a seq below `before` (all if None), grouped
    for display. Groups and their items are in event order; times are the events' own."""
    events_qs = RoomEvent.objects.filter(room=room)
    if before is not None:
        events_qs = events_qs.filter(seq__lt=before)
    page = list(
        events_qs.select_related("chunk").defer("chunk__data").order_by("-seq")[: limit + 1]
    )
    has_older = len(page) > limit
    events = page[:limit][::-1]

    stream_ids = {str(e.payload["stream_id"]) for e in events if e.payload.get("stream_id")}
    streams = {s.stream_id: s for s in Stream.objects.filter(room=room, stream_id__in=stream_ids)}
    turn_ids = {_turn_id(e.payload) for e in events} | {s.turn_id for s in streams.values()}
    turns = {t.pk: t for t in Turn.objects.filter(room=room, pk__in=turn_ids - {None})}

    groups: dict[tuple[str, Any], TimelineGroup] = {}
    group_streams: dict[tuple[tuple[str, Any], str], TimelineStream] = {}
    key: tuple[str, Any] = ("room", None)
    for event in events:
        stream_id = str(event.payload.get("stream_id") or "")
        stream = streams.get(stream_id)
        turn_id = stream.turn_id if stream is not None else _turn_id(event.payload)
        if turn_id in turns:
            key = ("turn", turn_id)
        elif stream_id:
            key = ("stream", stream_id)
        group = groups.get(key)
        if group is None:
            turn = turns.get(key[1]) if key[0] == "turn" else None
            started = min(turn.claimed_at, event.created_at) if turn else event.created_at
            group = groups[key] = TimelineGroup(turn=turn, started_at=started)
        item = TimelineEvent(
            seq=event.seq,
            type=event.type,
            at=event.created_at,
            offset_ms=round((event.created_at - group.started_at).total_seconds() * 1000),
            speaker=str(event.payload.get("speaker") or ""),
            name=str(event.payload.get("name") or ""),
            text=_text(event),
        )
        if stream_id:
            holder = group_streams.get((key, stream_id))
            if holder is None:
                holder = group_streams[(key, stream_id)] = TimelineStream(stream, stream_id)
                group.items.append(holder)
            holder.events.append(item)
        else:
            group.items.append(item)
    return Timeline(
        groups=list(groups.values()),
        first_seq=events[0].seq if events else None,
        last_seq=events[-1].seq if events else None,
        has_older=has_older,
    )
