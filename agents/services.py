"""Writes of the voice agent: sessions, exchanges, and the agent's use of the core's floor.

Every function is synchronous and keyword-only (run it with ``runtime.run_db``). The audio
of both sides goes through ``streams.services.chunk_ingest`` exactly as a POSTed chunk would,
so spectators of the session's room hear the user and the agent like any other speakers.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta
from typing import Any

from django.db import IntegrityError, transaction
from django.utils import timezone

from agents.models import AgentSession, Exchange
from streams import services as core
from streams.audio import PcmFormat
from streams.errors import ApiError, Conflict
from streams.models import Room, Stream

# A live session whose heartbeat is older than this no longer holds its room (crashed worker).
SESSION_STALE_S = 30.0
HEARTBEAT_S = 10.0


class AgentBusy(Exception):
    """Another live session already speaks as the agent of this room."""

    def __init__(self, room: str, session_id: str) -> None:
        super().__init__(f"Room {room!r} already has a live agent session ({session_id}).")
        self.room = room
        self.session_id = session_id


def agent_session_start(*, session_id: str, room_name: str, fields: dict[str, Any]) -> AgentSession:
    """Create the session record, holding the room's agent seat (AgentBusy when taken).

    A live session of the room whose heartbeat stopped more than SESSION_STALE_S ago (its
    worker died) is ended as ``abandoned`` first. Raises ApiError ``invalid_room``.
    """
    core.validate_room_name(room_name)
    now = timezone.now()
    with transaction.atomic():
        room, _ = Room.objects.get_or_create(name=room_name)
        stale = now - timedelta(seconds=SESSION_STALE_S)
        AgentSession.objects.filter(
            room=room, ended_at__isnull=True, heartbeat_at__lt=stale
        ).update(ended_at=now, end_reason="abandoned")
        live = AgentSession.objects.filter(room=room, ended_at__isnull=True).first()
        if live is not None:
            raise AgentBusy(room_name, str(live.id))
        try:
            with transaction.atomic():
                return AgentSession.objects.create(
                    id=session_id, room=room, heartbeat_at=now, **fields
                )
        except IntegrityError:  # another worker took the seat between our read and insert
            live = AgentSession.objects.filter(room=room, ended_at__isnull=True).first()
            raise AgentBusy(room_name, str(live.id) if live else "?") from None


def agent_session_update(*, session_id: str, fields: dict[str, Any]) -> None:
    AgentSession.objects.filter(pk=session_id).update(**fields)


def agent_session_heartbeat(*, session_id: str) -> None:
    AgentSession.objects.filter(pk=session_id, ended_at__isnull=True).update(
        heartbeat_at=timezone.now()
    )


def agent_session_end(*, session_id: str, reason: str) -> None:
    AgentSession.objects.filter(pk=session_id, ended_at__isnull=True).update(
        ended_at=timezone.now(), end_reason=reason[:64]
    )


def exchange_create(*, session_id: str, index: int, fields: dict[str, Any]) -> int:
    """The exchange record (its pk); ``fields`` are Exchange fields, stream ids by name."""
    fields = _with_streams(fields)
    return Exchange.objects.create(session_id=session_id, index=index, **fields).pk


def exchange_update(*, exchange_id: int, fields: dict[str, Any]) -> None:
    Exchange.objects.filter(pk=exchange_id).update(**_with_streams(fields))


def _with_streams(fields: dict[str, Any]) -> dict[str, Any]:
    out = dict(fields)
    for name in ("user_stream", "agent_stream"):
        stream_id = out.pop(name, None)
        if stream_id is not None:
            out[f"{name}_id"] = (
                Stream.objects.filter(stream_id=stream_id).values_list("pk", flat=True).first()
            )
    return out


def speech_chunk(
    *,
    room_name: str,
    speaker: str,
    stream_id: str,
    seq: int,
    data: bytes,
    sample_rate_hz: int,
    done: bool = False,
    text: str = "",
) -> dict[str, Any]:
    """One chunk of a side's utterance into the core (``chunk_ingest``: durable, broadcast).

    Raises the core's ApiError/Conflict (``floor_held`` while someone else speaks).
    """
    return core.chunk_ingest(
        core.ChunkIn(
            room_name=room_name,
            speaker=speaker,
            stream_id=stream_id,
            seq=seq,
            data=data,
            done=done,
            speech_text=text,
            fmt=PcmFormat(sample_rate_hz=sample_rate_hz),
        )
    )


def agent_cut(
    *,
    room_name: str,
    speaker: str,
    heard_text: str,
    heard_ms: int,
    reason: str,
    script: str | None = None,
) -> bool:
    """Barge-in on the core: the agent's turn ends now, interrupted, with what was heard.

    ``heard_ms`` is the agent's listener's playhead (agents/playout.py): the room may have
    got the reply later than the listener (it waited for the floor), so its own playhead
    would under-count. The heard text is published as a ``speech`` event marked
    ``interrupted``; ``script`` (the whole reply so far) is kept as the stream's script.
    False when the agent holds no floor (nothing of
    the reply reached the room yet, or its turn was already released).
    """
    with contextlib.suppress(Conflict, ApiError):
        core.floor_yield(
            room_name=room_name,
            speaker=speaker,
            force=False,
            heard_text=heard_text,
            heard_ms=heard_ms,
            reason=reason,
            script=script,
        )
        return True
    return False
