"""A late joiner's audio so far is read page by page (issue 8, section 1: the cost of a
request is bounded by its size, and a spectator's handshake is a request).

Without `after` a spectator gets a state snapshot, then the audio of the streams now live,
then live events. The backlog can be a whole stream (50 MiB); building it at once held all of
it, its base64 and its JSON in memory per joining socket.
"""

from __future__ import annotations

import base64
import tracemalloc

import httpx
import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from spectate.services import backlog_page
from streams import selectors
from streams.models import Room, RoomEvent
from tests.conftest import b64

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

MIB = 1024 * 1024
CHUNKS = 24  # 24 MiB of audio so far: 9 minutes at 24 kHz mono 16-bit, under a stream's cap
# Generous: a page is about 4 MiB of audio (its bytes, base64 and JSON: ~15 MB); the whole
# backlog at once is 24 MiB of bytes and 32 MB of base64 before any JSON.
PEAK_BYTES = 24 * MIB


def chunk(seq: int) -> bytes:
    return bytes([seq]) * MIB


async def post(client: httpx.AsyncClient, seq: int) -> None:
    body = {"stream_id": "deep-s", "seq": seq, "room": "deep", "speaker": "alice"}
    response = await client.post("/audio", json={**body, "data": b64(chunk(seq))})
    assert response.status_code == 200, response.text


async def test_a_late_joiner_gets_a_big_backlog_whole_and_page_by_page():
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for seq in range(CHUNKS):
            await post(client, seq)
        late = WebsocketCommunicator(application, "/spectate/ws?room=deep")
        tracemalloc.start()
        try:
            connected, _ = await late.connect(timeout=60)
            assert connected
            state = await late.receive_json_from(timeout=60)
            assert state["type"] == "state" and state["stream"]["chunks"] == CHUNKS
            seen = []
            for _ in range(CHUNKS):
                message = await late.receive_json_from(timeout=60)
                assert message["type"] == "audio_chunk", message["type"]
                assert base64.b64decode(message["data"]) == chunk(message["seq"])
                seen.append((message["id"], message["seq"]))
                del message
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        # Complete, in order, each once: the ids of every chunk event up to the state's id.
        stored = RoomEvent.objects.filter(room__name="deep", type="audio_chunk").order_by("seq")
        expected = [seq async for seq in stored.values_list("seq", flat=True)]
        assert [event_id for event_id, _ in seen] == expected
        assert [seq for _, seq in seen] == list(range(CHUNKS))
        assert seen[-1][0] <= state["id"]
        assert peak < PEAK_BYTES, f"peak {peak / MIB:.1f} MiB for a {CHUNKS} MiB backlog"
        # Then live, with no gap and no duplicate.
        await post(client, CHUNKS)
        live = await late.receive_json_from(timeout=60)
        assert (live["type"], live["seq"], live["id"]) == ("audio_chunk", CHUNKS, state["id"] + 1)
        await late.disconnect()


async def test_the_backlog_is_paged_by_bytes(monkeypatch):
    """Pages stop at the audio budget, and the pages together are the backlog."""
    monkeypatch.setattr(selectors, "EVENT_PAGE_AUDIO_BYTES", 2 * MIB)
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for seq in range(5):
            await post(client, seq)
    late = WebsocketCommunicator(application, "/spectate/ws?room=deep")
    assert (await late.connect(timeout=60))[0]
    state = await late.receive_json_from(timeout=60)
    seqs = [(await late.receive_json_from(timeout=60))["seq"] for _ in range(5)]
    assert seqs == [0, 1, 2, 3, 4]
    assert await late.receive_nothing(timeout=0.5)
    await late.disconnect()

    def pages() -> list[list[int]]:
        streams = [selectors.active_stream_id(Room.objects.get(name="deep"))]
        found, after = [], 0
        while page := backlog_page(
            room_name="deep", streams=streams, after=after, up_to=state["id"]
        ):
            found.append([m["seq"] for m in page])
            after = page[-1]["id"]
        return found

    assert await sync_to_async(pages)() == [[0, 1], [2, 3], [4]]
