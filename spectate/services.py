"""Spectator joins and leaves, and the catch-up a joining socket needs."""

from __future__ import annotations

from typing import Any

from django.utils import timezone

from streams import selectors
from streams.models import Room, SpectatorPresence, Stream, StreamKind, StreamStatus


def spectator_join(*, room_name: str, channel_name: str, after: int | None) -> dict[str, Any]:
    """Register the socket and return what it must receive before live events.

    Without `after`: a state snapshot, then the active stream's audio so far. With `after`:
    the stored events after it. Either way `resume_from` is the id live delivery continues
    after, so nothing is sent twice and nothing is skipped.
    """
    room, _ = Room.objects.get_or_create(name=room_name)
    SpectatorPresence.objects.update_or_create(
        channel_name=channel_name, defaults={"room": room, "seen_at": timezone.now()}
    )
    room.refresh_from_db(fields=["last_event_id"])
    high_water = room.last_event_id
    if after is None:
        state = {
            "type": "state",
            "id": high_water,
            "room": room.name,
            "ts": selectors.iso(timezone.now()),
            **selectors.room_state(room),
        }
        backlog = selectors.active_stream_backlog(room, up_to=high_water)
        recordings = _recordings_backlog(room, up_to=high_water)
        if recordings:
            # Both are in event order; together they must be too.
            backlog = sorted([*backlog, *recordings], key=lambda message: message["id"])
        return {"messages": [state, *backlog], "resume_from": high_water}
    return {"messages": [], "resume_from": min(after, high_water), "catch_up": True}


def _recordings_backlog(room: Room, up_to: int) -> list[dict[str, Any]]:
    """The audio so far of recordings in progress in the room.

    A recording takes no turn, so the floor's backlog never names it; a stream of kind
    recording still streaming here is one (a PCM recording's own stream, or the decoded
    live stream of a container recording: only those carry audio_chunk events).
    """
    live = Stream.objects.filter(
        room=room, kind=StreamKind.RECORDING, status=StreamStatus.STREAMING, chunk_count__gt=0
    ).values("pk")
    return selectors.audio_events(room, streams=live, up_to=up_to)


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
