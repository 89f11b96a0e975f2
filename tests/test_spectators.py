"""The spectator socket and the long-poll, through the real ASGI application in one loop."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import timedelta

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from config.asgi import application
from streams.models import SpectatorPresence, Stream
from tests.conftest import b64, pcm

pytestmark = pytest.mark.django_db(transaction=True)
TENTH = pcm(0.1)


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


async def spectate(query: str = "room=r1") -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/spectate/ws?{query}")
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def receive_until(communicator, kind: str, timeout: float = 3.0) -> list[dict]:
    seen = []
    while True:
        message = await communicator.receive_json_from(timeout=timeout)
        seen.append(message)
        if message["type"] == kind:
            return seen


async def post(client, **fields):
    body = {"stream_id": "s1", "room": "r1", "speaker": "alice", **fields}
    if isinstance(body.get("data"), bytes):
        body["data"] = b64(body["data"])
    response = await client.post("/audio", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_state_first_then_the_whole_flow_in_order():
    spectator = await spectate()
    state = await spectator.receive_json_from()
    assert state["type"] == "state"
    assert state["speaker"] is None and state["spectators"] == 1
    async with http() as client:
        for seq in range(3):
            await post(client, seq=seq, data=TENTH, done=seq == 2, speech_text="Hello.")
        ack_end = timezone.now()
    messages = await receive_until(spectator, "state")  # turn claimed, state
    messages += await receive_until(spectator, "state")  # ... chunks ... release, state
    kinds = [m["type"] for m in messages]
    assert kinds == [
        "turn",
        "state",
        "audio_chunk",
        "audio_chunk",
        "audio_chunk",
        "playback_done",
        "speech",
        "input",
        "input",
        "turn",
        "state",
    ]
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    chunks = [m for m in messages if m["type"] == "audio_chunk"]
    assert [c["seq"] for c in chunks] == [0, 1, 2]
    assert [c["offset_ms"] for c in chunks] == [0, 100, 200]
    assert base64.b64decode(chunks[1]["data"]) == TENTH
    assert {m["room"] for m in messages} == {"r1"}
    assert all(m["ts"].endswith("Z") for m in messages)
    # Released by the server's own timer, at (not before) the predicted end.
    done = next(m for m in messages if m["type"] == "playback_done")
    stream = await database_sync_to_async(Stream.objects.get)()
    released_at = timezone.datetime.fromisoformat(done["ts"].replace("Z", "+00:00"))
    assert released_at >= stream.playback_ends_at
    assert released_at - stream.playback_ends_at < timedelta(milliseconds=500)
    assert ack_end < stream.playback_ends_at
    assert [m["name"] for m in messages if m["type"] == "input"] == [
        "SpeechFinished",
        "AudioEnded",
    ]
    assert messages[-1]["speaker"] is None
    await spectator.disconnect()


async def test_late_joiner_gets_state_then_the_chunks_so_far():
    async with http() as client:
        await post(client, seq=0, data=TENTH)
        await post(client, seq=1, data=TENTH)
        late = await spectate()
        state = await late.receive_json_from()
        assert state["type"] == "state"
        assert state["speaker"] == "alice"
        assert state["stream"]["stream_id"] == "s1"
        backlog = [await late.receive_json_from(), await late.receive_json_from()]
        assert [m["seq"] for m in backlog] == [0, 1]
        await post(client, seq=2, data=TENTH)
        live = await late.receive_json_from()
        assert (live["type"], live["seq"]) == ("audio_chunk", 2)
        assert live["id"] == backlog[-1]["id"] + 1
    await late.disconnect()


async def test_resume_after_an_id_has_no_gap_and_no_duplicate():
    async with http() as client:
        first = await spectate()
        await first.receive_json_from()  # state
        await post(client, seq=0, data=TENTH)
        seen = [await first.receive_json_from() for _ in range(3)]  # turn, state, chunk 0
        await first.disconnect()
        await post(client, seq=1, data=TENTH)  # missed while away
        await post(client, seq=2, data=TENTH)
        resumed = await spectate(f"room=r1&after={seen[-1]['id']}")
        replay = [await resumed.receive_json_from() for _ in range(2)]
        assert [(m["type"], m["seq"]) for m in replay] == [("audio_chunk", 1), ("audio_chunk", 2)]
        assert replay[0]["id"] == seen[-1]["id"] + 1
        assert base64.b64decode(replay[0]["data"]) == TENTH
        await post(client, seq=3, data=TENTH)
        live = await resumed.receive_json_from()
        assert live["seq"] == 3 and live["id"] == replay[-1]["id"] + 1
        assert await resumed.receive_nothing(timeout=0.2)
    await resumed.disconnect()


async def test_out_of_order_posts_reach_spectators_in_seq_order():
    spectator = await spectate()
    await spectator.receive_json_from()
    async with http() as client:
        for seq in (2, 0, 3, 1):
            await post(client, seq=seq, data=TENTH)
    messages = [await spectator.receive_json_from() for _ in range(6)]
    assert [m.get("seq") for m in messages if m["type"] == "audio_chunk"] == [0, 1, 2, 3]
    await spectator.disconnect()


async def test_spectators_are_read_only_and_survive_it():
    spectator = await spectate()
    await spectator.receive_json_from()
    await spectator.send_to(text_data=json.dumps({"type": "audio_done"}))
    error = await spectator.receive_json_from()
    assert (error["type"], error["error"]) == ("error", "read_only")
    await spectator.send_to(bytes_data=b"\x00\x01")
    assert (await spectator.receive_json_from())["error"] == "read_only"
    await spectator.send_to(text_data="not json at all")
    error = await spectator.receive_json_from()
    assert (error["error"], error["room"]) == ("read_only", "r1")
    assert isinstance(error["id"], int) and error["ts"].endswith("Z")
    async with http() as client:
        await post(client, seq=0, data=TENTH)
    assert (await spectator.receive_json_from())["type"] == "turn"
    await spectator.disconnect()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("room=bad%20room", "invalid_room"),
        ("room=r1&after=x", "invalid_after"),
        ("room=r1&after=%C2%B2", "invalid_after"),  # a superscript two: a digit, not 0-9
        ("room=r1&after=%D9%A3", "invalid_after"),  # an Arabic-Indic three
        ("room=lob%0A", "invalid_room"),  # a trailing newline
    ],
)
async def test_bad_spectator_query_gets_an_error_and_a_close(query, error):
    communicator = WebsocketCommunicator(application, f"/spectate/ws?{query}")
    connected, _ = await communicator.connect()
    assert connected
    message = await communicator.receive_json_from()
    assert (message["type"], message["error"]) == ("error", error)
    assert {"id", "room", "ts"} <= message.keys()  # like every message
    assert (await communicator.receive_output())["type"] == "websocket.close"


async def test_spectator_count_follows_connections():
    one = await spectate()
    await one.receive_json_from()
    two = await spectate()
    assert (await two.receive_json_from())["spectators"] == 2
    await one.disconnect()
    count = await database_sync_to_async(SpectatorPresence.objects.count)()
    assert count == 1
    await two.disconnect()


async def test_long_poll_wakes_on_the_next_event():
    async with http() as client:
        waiting = asyncio.create_task(
            client.get("/api/rooms/r1/events", params={"types": "input", "wait": 5})
        )
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await post(client, seq=0, data=TENTH, done=True)
        response = await asyncio.wait_for(waiting, 3)
    body = response.json()
    assert [e["name"] for e in body["events"]] == ["SpeechFinished", "AudioEnded"]
    assert body["last_id"] >= body["events"][-1]["id"]


async def test_long_poll_times_out_empty():
    async with http() as client:
        response = await client.get("/api/rooms/r1/events", params={"wait": 0.3, "after": 0})
    assert response.json() == {"events": [], "last_id": 0}
