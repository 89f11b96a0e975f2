"""The room event log: allocate ids, write events, broadcast them after commit (outbox)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from streams.models import Chunk, Room, RoomEvent


def room_group(room_name: str) -> str:
    return f"room.{room_name}"


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def allocate_event_ids(room_id: int, count: int) -> int:
    """Reserve `count` ids for a room; returns the last. Row-locks the room until commit."""
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE streams_room SET last_event_id = last_event_id + %s WHERE id = %s "
            "RETURNING last_event_id",
            [count, room_id],
        )
        return cursor.fetchone()[0]


def insert_events(rows: list[tuple[int, int, str, dict[str, Any], int | None, datetime]]) -> None:
    """Write event rows `(room_id, seq, type, payload, chunk_id, created_at)` in one statement.

    Plain SQL: these inserts sit on the ingest and release paths, where the ORM's
    bulk_create cost more than the database did (docs/benchmarks.md).
    """
    ops = connection.ops
    params: list[Any] = []
    for room_id, seq, type_, payload, chunk_id, created_at in rows:
        params += [
            room_id,
            seq,
            type_,
            ops.adapt_json_value(payload, None),
            chunk_id,
            ops.adapt_datetimefield_value(created_at),
        ]
    values = ", ".join(["(%s, %s, %s, %s, %s, %s)"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO streams_roomevent (room_id, seq, type, payload, chunk_id, created_at)"
            " VALUES " + values,
            params,
        )


def event_message(
    *, seq: int, room_name: str, type: str, created_at: datetime, payload: dict[str, Any]
) -> dict[str, Any]:
    return {"type": type, "id": seq, "room": room_name, "ts": iso(created_at), **payload}


def audio_message(event_message_: dict[str, Any], data: bytes) -> dict[str, Any]:
    return {**event_message_, "data": base64.b64encode(data).decode("ascii")}


@dataclass
class EventBatch:
    """Events of one transaction: numbered together, written together, sent after commit."""

    room: Room
    _pending: list[tuple[str, dict[str, Any], Chunk | None, bytes | None]] = field(
        default_factory=list
    )
    messages: list[dict[str, Any]] = field(default_factory=list)

    def add(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        chunk: Chunk | None = None,
        data: bytes | None = None,
    ) -> None:
        self._pending.append((type, payload, chunk, data))

    def flush(self) -> list[dict[str, Any]]:
        if not self._pending:
            return []
        last = allocate_event_ids(self.room.pk, len(self._pending))
        first = last - len(self._pending) + 1
        now = timezone.now()
        rows = []
        messages = []
        for offset, (type_, payload, chunk, data) in enumerate(self._pending):
            seq = first + offset
            if type_ == "state":
                # A stored snapshot names itself as the point to resume after.
                payload = {**payload, "last_event_id": seq}
            chunk_id = chunk.pk if chunk is not None else None
            rows.append((self.room.pk, seq, type_, payload, chunk_id, now))
            message = event_message(
                seq=seq, room_name=self.room.name, type=type_, created_at=now, payload=payload
            )
            if data is not None:
                message = audio_message(message, data)
            messages.append(message)
        insert_events(rows)
        self._pending.clear()
        self.room.last_event_id = last
        self.messages.extend(messages)
        group = room_group(self.room.name)
        transaction.on_commit(lambda: broadcast(group, messages))
        return messages


def broadcast(group: str, messages: list[dict[str, Any]]) -> None:
    # Imported here: the runtime pulls in the channel layer, which needs settings loaded.
    from streams.runtime import runtime

    # Encoded once here, not once per spectator socket: each consumer sends the text as is.
    events = [{"id": message["id"], "json": json.dumps(message)} for message in messages]
    # The room names the listeners a process hands the message to (spectate/hub.py).
    room = messages[0]["room"] if messages else ""
    runtime.publish(group, {"type": "room.events", "room": room, "events": events})


def hydrate(event: RoomEvent, room_name: str) -> dict[str, Any]:
    """Rebuild the broadcast message of a stored event (audio bytes come from the chunk)."""
    message = event_message(
        seq=event.seq,
        room_name=room_name,
        type=event.type,
        created_at=event.created_at,
        payload=event.payload,
    )
    if event.type == "audio_chunk" and event.chunk_id is not None:
        message = audio_message(message, bytes(event.chunk.data))
    return message
