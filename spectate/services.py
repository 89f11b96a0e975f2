"""Spectator joins and leaves, and the catch-up a joining socket needs."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from streams import selectors
from streams.models import Room, SpectatorPresence, Stream, StreamKind, StreamStatus


def spectator_join(*, room_name: str, channel_name: str, after: int | None) -> dict[str, Any]:
    """Register the socket and say what it must receive before live events.

    Returns `{"messages": [...], "resume_from": id}` and either `"catch_up": True` or a
    `"backlog"`: `resume_from` is the id live delivery continues after, so nothing is sent
    twice and nothing is skipped. With `after`: no messages, and the stored events after it
    (catch_up, read page by page with events_between). Without: a state snapshot, and the
    backlog `{"streams": [pk, ...], "up_to": id}` of the audio so far of the streams now
    live, read page by page with backlog_page (a page is bounded in bytes, the backlog not).
    """
    room, _ = Room.objects.get_or_create(name=room_name)
    SpectatorPresence.objects.update_or_create(
        channel_name=channel_name, defaults={"room": room, "seen_at": timezone.now()}
    )
    room.refresh_from_db(fields=["last_event_id"])
    high_water = room.last_event_id
    if after is not None:
        return {"messages": [], "resume_from": min(after, high_water), "catch_up": True}
    state = {
        "type": "state",
        "id": high_water,
        "room": room.name,
        "ts": selectors.iso(timezone.now()),
        **selectors.room_state(room),
    }
    streams = _recording_stream_ids(room)
    active = selectors.active_stream_id(room)
    if active is not None:
        streams.append(active)
    return {
        "messages": [state],
        "resume_from": high_water,
        "backlog": {"streams": streams, "up_to": high_water},
    }


def _recording_stream_ids(room: Room) -> list[int]:
    """The recordings in progress in the room whose audio a late joiner gets so far.

    A recording takes no turn, so the floor's backlog never names it; a stream of kind
    recording still streaming here is one (a PCM recording's own stream, or the decoded
    live stream of a container recording: only those carry audio_chunk events).
    """
    live = Stream.objects.filter(
        room=room, kind=StreamKind.RECORDING, status=StreamStatus.STREAMING, chunk_count__gt=0
    )
    return list(live.values_list("pk", flat=True))


def backlog_page(
    *, room_name: str, streams: list[int], after: int, up_to: int
) -> list[dict[str, Any]]:
    """The next page of a late joiner's backlog: audio_chunk events of `streams` (pks) with
    after < id <= up_to, in id order, at most selectors.EVENT_PAGE events or about
    EVENT_PAGE_AUDIO_BYTES of audio. Empty when the backlog is done."""
    room = Room.objects.filter(name=room_name).first()
    if room is None or not streams:
        return []
    return selectors.audio_events_after(room, streams=streams, after=after, up_to=up_to)[0]


def events_between(*, room_name: str, after: int, up_to: int | None) -> list[dict[str, Any]]:
    room = Room.objects.filter(name=room_name).first()
    if room is None:
        return []
    return selectors.events_after(room, after=after, up_to=up_to)[0]


def spectator_leave(*, channel_name: str) -> None:
    SpectatorPresence.objects.filter(channel_name=channel_name).delete()


def room_high_water(*, room_names: list[str]) -> dict[str, int]:
    """`{room name: last_event_id}` of the named rooms that exist (one query)."""
    return dict(Room.objects.filter(name__in=room_names).values_list("name", "last_event_id"))
