"""WS /ws/audio: POST /audio's chunks over one socket (issue 11 §2), in process and over a real
server: acks once committed, in order; binary frames continue a stream; every bad frame is an
error frame naming the field and the seq, and the session goes on; a client cannot pile up
unacknowledged chunks; what was acknowledged survives a SIGKILLed worker."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import httpx
import pytest
import websockets
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from streams.models import Chunk, Stream
from tests.conftest import pcm
from tests.support.parley_server import running_server
from tests.support.servers import PARLEY_SERVER, DaphneProcess

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

TENTH = pcm(0.1)  # 4800 bytes at 24 kHz mono 16-bit
ACK_FIELDS = {
    "stream_id",
    "seq",
    "duplicate",
    "received_bytes",
    "received_chunks",
    "done",
    "status",
}


class Socket:
    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.ws = communicator

    async def json(self, **fields: Any) -> None:
        if isinstance(fields.get("data"), bytes):
            fields["data"] = base64.b64encode(fields["data"]).decode()
        await self.ws.send_to(text_data=json.dumps(fields))

    async def recv(self, timeout: float = 30) -> dict[str, Any]:
        message = await self.ws.receive_output(timeout)
        if message["type"] == "websocket.close":
            return {"type": "<close>", "code": message.get("code"), "reason": message.get("reason")}
        return json.loads(message["text"])


async def connect(query: str = "room=r1&speaker=alice") -> tuple[Socket, dict[str, Any]]:
    communicator = WebsocketCommunicator(application, f"/ws/audio?{query}")
    connected, _ = await communicator.connect(timeout=20)
    assert connected
    socket = Socket(communicator)
    return socket, await socket.recv()


async def test_json_then_binary_chunks_are_acked_in_order_and_stored():
    socket, ready = await connect()
    assert ready == {
        "type": "ready",
        "room": "r1",
        "speaker": "alice",
        "max_chunk_bytes": 1024 * 1024,
        "window": 64,
    }
    await socket.json(stream_id="w1", seq=0, data=TENTH)
    for _ in range(3):
        await socket.ws.send_to(bytes_data=TENTH)
    await socket.json(stream_id="w1", seq=4, data=b"", done=True, speech_text="Hello.")
    acks = [await socket.recv() for _ in range(5)]
    assert [a["type"] for a in acks] == ["ack"] * 5
    assert [a["seq"] for a in acks] == [0, 1, 2, 3, 4]
    assert set(acks[0]) == {"type", *ACK_FIELDS}
    assert acks[-1]["done"] is True and acks[-1]["duration_ms"] == 400
    assert acks[-1]["received_bytes"] == 4 * len(TENTH)
    stream = await sync_to_async(Stream.objects.get)(stream_id="w1")
    assert (stream.room_id is not None, stream.speaker, stream.speech_text) == (
        True,
        "alice",
        "Hello.",
    )
    data = await sync_to_async(list)(
        Chunk.objects.filter(stream=stream).order_by("seq").values_list("data", flat=True)
    )
    assert b"".join(bytes(d) for d in data) == TENTH * 4
    await socket.ws.disconnect(timeout=10)


async def test_binary_frames_of_the_stream_the_query_names():
    socket, _ = await connect("room=r2&speaker=bob&stream_id=q1&sample_rate_hz=16000&seq=5")
    await socket.ws.send_to(bytes_data=pcm(0.1, sample_rate=16000))
    ack = await socket.recv()
    assert (ack["type"], ack["stream_id"], ack["seq"]) == ("ack", "q1", 5)
    stream = await sync_to_async(Stream.objects.get)(stream_id="q1")
    assert stream.sample_rate_hz == 16000
    await socket.ws.disconnect(timeout=10)


@pytest.mark.parametrize(
    ("frame", "error", "field"),
    [
        ("not json", "malformed_json", None),
        ("[1, 2]", "malformed_json", None),
        ('{"stream_id": "h", "seq": ' + "9" * 5000 + ', "data": ""}', "invalid_seq", "seq"),
        ('{"stream_id": "h", "seq": -1, "data": ""}', "invalid_seq", "seq"),
        ('{"stream_id": "h", "seq": 0, "data": "***"}', "bad_base64", "data"),
        ('{"stream_id": "h", "seq": 0, "data": "AA=="}', "partial_frame", "data"),
        (
            '{"stream_id": "h", "seq": 0, "data": "", "speaker": "eve"}',
            "speaker_mismatch",
            "speaker",
        ),
        (
            '{"stream_id": "h", "seq": 0, "data": "", "sample_rate_hz": 1}',
            "invalid_sample_rate_hz",
            "sample_rate_hz",
        ),
        ('{"stream_id": "h\\u0000", "seq": 0, "data": ""}', "invalid_stream_id", "stream_id"),
    ],
)
async def test_a_bad_text_frame_is_an_error_frame_and_the_session_goes_on(frame, error, field):
    socket, _ = await connect()
    await socket.ws.send_to(text_data=frame)
    refused = await socket.recv()
    assert (refused["type"], refused["error"], refused["field"]) == ("error", error, field)
    assert refused["status"] in (400, 403, 413)
    await socket.json(stream_id="after", seq=0, data=TENTH)
    assert (await socket.recv())["type"] == "ack"
    await socket.ws.disconnect(timeout=10)


async def test_bad_binary_frames_are_error_frames_with_their_seq():
    socket, _ = await connect()
    await socket.ws.send_to(bytes_data=TENTH)  # no stream yet
    refused = await socket.recv()
    assert (refused["error"], refused["field"], refused["seq"]) == (
        "missing_stream_id",
        "stream_id",
        None,
    )
    await socket.json(stream_id="b1", seq=0, data=TENTH)
    assert (await socket.recv())["type"] == "ack"
    await socket.ws.send_to(bytes_data=b"\x00" * 3)  # not whole 16-bit frames
    refused = await socket.recv()
    assert (refused["error"], refused["seq"]) == ("partial_frame", 1)
    await socket.ws.send_to(bytes_data=TENTH)  # seq 1 again: the refused one took no seq
    ack = await socket.recv()
    assert (ack["type"], ack["seq"]) == ("ack", 1)
    await socket.ws.disconnect(timeout=10)


async def test_a_resent_seq_is_a_duplicate_and_a_conflict_is_refused():
    socket, _ = await connect()
    await socket.json(stream_id="d1", seq=0, data=TENTH)
    await socket.json(stream_id="d1", seq=1, data=TENTH)
    await socket.json(stream_id="d1", seq=0, data=TENTH)
    await socket.json(stream_id="d1", seq=0, data=pcm(0.2))
    answers = [await socket.recv() for _ in range(4)]
    assert [a.get("duplicate", a.get("error")) for a in answers] == [
        False,
        False,
        True,
        "chunk_conflict",
    ]
    await socket.ws.disconnect(timeout=10)


async def test_a_client_past_the_window_is_told_and_closed(settings):
    settings.PARLEY_INGEST_WS_WINDOW = 1
    socket, _ = await connect()
    await socket.json(stream_id="wnd", seq=0, data=TENTH)
    await socket.json(stream_id="wnd", seq=1, data=TENTH)
    seen = [await socket.recv()]
    while seen[-1]["type"] != "<close>":
        seen.append(await socket.recv())
    refused = [m for m in seen if m["type"] == "error"]
    assert [(m["error"], m["seq"], m["status"]) for m in refused] == [
        ("too_many_unacknowledged", 1, 429)
    ]
    assert seen[-1]["code"] == 1008
    await socket.ws.wait(timeout=10)


@pytest.mark.parametrize("query", ["room=has%20space", "room=&speaker=alice"])
async def test_a_refused_handshake_says_why(query):
    # An empty `room=` is refused like anywhere in the API; only a missing one means default.
    socket, refused = await connect(query)
    assert (refused["error"], refused["field"]) == ("invalid_room", "room")
    closed = await socket.recv()
    assert closed == {"type": "<close>", "code": 4400, "reason": "invalid_room"}
    await socket.ws.wait(timeout=10)


# --- a real server, this leg's database ------------------------------------------------------


def test_acked_chunks_survive_a_sigkilled_worker_and_big_json_frames_pass():
    with running_server(require_auth=True) as server:
        url = f"{server.ws_url}/ws/audio?room=k1&speaker=agent&stream_id=kill"
        headers = {"Authorization": f"Bearer {server.api_key}"}

        async def send() -> list[dict[str, Any]]:
            async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
                assert json.loads(await ws.recv())["type"] == "ready"
                # Sent at once, never waiting for an ack: committed in groups, acked in order.
                for _ in range(60):
                    await ws.send(TENTH)  # the query's stream, seq 0, 1, ...
                # The largest chunk POST /audio takes, as JSON: 1.4 MB of text frame.
                big = base64.b64encode(b"\x00" * (1024 * 1024)).decode()
                chunk = {"room": "k2", "stream_id": "big", "seq": 0, "data": big}
                await ws.send(json.dumps(chunk))
                return [json.loads(await ws.recv()) for _ in range(61)]

        acks = asyncio.run(send())
        assert [a["type"] for a in acks] == ["ack"] * 61, acks[:2]
        assert [a["seq"] for a in acks[:60]] == list(range(60))
        assert acks[59]["stream_id"] == "kill" and acks[59]["received_bytes"] == 60 * len(TENTH)
        assert acks[60]["stream_id"] == "big" and acks[60]["received_bytes"] == 1024 * 1024
        server.daphne.kill()
        server.daphne.stop()
        again = DaphneProcess(env=server.env, server=PARLEY_SERVER, name="parley-again")
        try:
            body = httpx.get(f"{again.url}/api/streams/kill", headers=headers, timeout=30).json()
        finally:
            again.stop()
        assert body["bytes"] == 60 * len(TENTH) and body["chunks"] == 60


def test_unauthenticated_sockets_are_refused_when_keys_are_required():
    with running_server(require_auth=True) as server:

        async def attempt() -> tuple[dict[str, Any], int | None]:
            async with websockets.connect(f"{server.ws_url}/ws/audio?room=x") as ws:
                first = json.loads(await ws.recv())
                with pytest.raises(websockets.ConnectionClosed):
                    await ws.recv()
                return first, ws.close_code

        refused, code = asyncio.run(attempt())
        assert (refused["error"], code) == ("auth_required", 4401)
