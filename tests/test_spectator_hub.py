"""The room hub hands events on in id order, once per room (spectate/hub.py, issue 11 §1).

Broadcasts of two workers can cross in Redis: a later id may arrive first. The hub holds it
behind the gap; the missing broadcast, if it comes, is handed on before it, and if it does
not, the hub reads the gap from the event log once for the room. A listener here is the
hub's own interface (what a spectator socket or a long-poll implements), recording ids.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from channels.layers import get_channel_layer

from config.asgi import application
from spectate.hub import hub
from streams.events import room_group
from tests.conftest import b64, pcm

pytestmark = pytest.mark.django_db(transaction=True)
ROOM = "hubroom"


class Recorder:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.messages: list[dict[str, Any]] = []

    def deliver(self, message: dict[str, Any]) -> None:
        if message["type"] == "room.events":
            self.ids += [event["id"] for event in message["events"]]
            self.messages.append(message)

    def behind(self, mark: int) -> bool:
        return (self.ids[-1] if self.ids else 0) < mark

    def gone(self) -> bool:
        return False


async def logged_events(count: int) -> None:
    """Chunks POSTed to ROOM until its log holds at least `count` events."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://t"
    ) as client:
        for seq in range(count):
            body = {"stream_id": "s1", "room": ROOM, "speaker": "a", "seq": seq}
            response = await client.post("/audio", json={**body, "data": b64(pcm(0.02))})
            assert response.status_code == 200, response.text


async def publish(*ids: int) -> None:
    events = [{"id": i, "json": json.dumps({"id": i, "room": ROOM})} for i in ids]
    await get_channel_layer().group_send(
        room_group(ROOM), {"type": "room.events", "room": ROOM, "events": events}
    )


async def wait_for(recorder: Recorder, last: int, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not recorder.ids or recorder.ids[-1] < last:
        assert asyncio.get_running_loop().time() < deadline, recorder.ids
        await asyncio.sleep(0.01)


async def test_a_broadcast_ahead_of_a_gap_waits_for_it_or_for_the_log() -> None:
    await logged_events(6)  # a turn, a state, chunks...: ids 1..n in the log
    recorder = Recorder()
    await hub.join(ROOM, recorder)
    try:
        await publish(1)
        await wait_for(recorder, 1)
        # Crossed: 3 arrives before 2, then 2 comes; handed on in order, nothing read.
        await publish(3)
        await asyncio.sleep(0.01)
        await publish(2)
        await wait_for(recorder, 3)
        assert recorder.ids == [1, 2, 3]
        # 6 arrives, 4 and 5 never do: read from the log, once, before 6.
        await publish(6)
        await wait_for(recorder, 6)
        assert recorder.ids == [1, 2, 3, 4, 5, 6]
        filled = [m for m in recorder.messages if [e["id"] for e in m["events"]] == [4, 5]]
        assert len(filled) == 1
        assert json.loads(filled[0]["events"][0]["json"])["room"] == ROOM
        # Duplicates the hub has handed on already still reach the listener (each socket
        # drops what it has sent by id), in the order they came.
        await publish(5, 6, 7)
        await wait_for(recorder, 7)
        assert recorder.ids[-3:] == [5, 6, 7]
    finally:
        hub.leave(ROOM, recorder)
