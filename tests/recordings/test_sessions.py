"""/ws/streaming, force stop, the files and the records API, through the ASGI app in one loop."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from recordings import services
from recordings.models import Recording
from streams.auth import api_key_create
from streams.models import Chunk, RoomEvent, Stream
from tests.recordings.clients import TENTH_BYTES, close_enough, encoded_audio, pcm, split, wav_info
from tests.recordings.conftest import http, ws_connect, ws_open

pytestmark = pytest.mark.django_db(transaction=True)
RECEIVED = ("response", {"message": "received chunk"})


async def recording(sid: str) -> Recording:
    return await database_sync_to_async(
        lambda: Recording.objects.select_related("stream").get(stream__stream_id=sid)
    )()


async def stored(sid: str) -> list[bytes]:
    return await database_sync_to_async(
        lambda: [
            bytes(d)
            for d in Chunk.objects.filter(stream__stream_id=sid)
            .order_by("seq")
            .values_list("data", flat=True)
        ]
    )()


async def force_stop(**kwargs):
    async with http() as client:
        return await client.post("/streaming/force_stop", **kwargs)


async def test_connect_gives_the_seed_message_an_id_and_a_key():
    ws, hello = await ws_open()
    assert hello["message"] == "Connected to server"
    assert len(hello["streaming_id"]) == 20 and len(hello["streaming_key"]) >= 32
    saved = await recording(hello["streaming_id"])
    assert saved.status == "recording" and saved.stream.kind == "recording"
    assert saved.key_hash != hello["streaming_key"]  # only a hash is stored
    await ws.disconnect()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("format=flac", "invalid_format"),
        ("sample_rate_hz=7", "invalid_sample_rate_hz"),
        ("channels=3", "invalid_channels"),
        ("bytes_per_sample=x", "invalid_bytes_per_sample"),
        ("room=bad%20room", "invalid_room"),
        ("speaker=no%20spaces", "invalid_speaker"),
        ("api_key=pk_unknown", "invalid_api_key"),
    ],
)
async def test_bad_connect_parameters_get_an_error_and_a_close(query, error):
    ws, event, data = await ws_connect(query)
    assert (event, data["error"]) == ("error", error), data
    assert await ws.closed_with() == 4400


async def test_a_malformed_authorization_header_is_refused():
    ws, event, data = await ws_connect(headers=[(b"host", b"t"), (b"authorization", b"Basic x")])
    assert (event, data["error"]) == ("error", "invalid_authorization")
    assert await ws.closed_with() == 4400


async def test_an_api_key_names_the_speaker(settings):
    settings.PARLEY_REQUIRE_AUTH = True
    ws, event, data = await ws_connect()
    assert (event, data["error"]) == ("error", "auth_required")
    _, raw = await database_sync_to_async(api_key_create)(speaker="alice")
    ws, hello = await ws_open(f"api_key={raw}")
    assert (await recording(hello["streaming_id"])).stream.speaker == "alice"
    await ws.disconnect()


async def test_every_bad_chunk_gets_an_error_and_the_session_goes_on(settings):
    settings.PARLEY_MAX_RECORDING_S = 1.0
    ws, hello = await ws_open()
    cases = [
        (ws.chunk(b""), "empty_chunk"),
        (ws.chunk(b"\x00" * 3), "partial_frame"),
        (ws.chunk(b"\x00" * (1024 * 1024 + 2)), "chunk_too_large"),
        (ws.send("audio_chunk", {"chunk": "AAAA"}), "invalid_chunk"),
        (ws.send("dance"), "unknown_event"),
        (ws.chunk(pcm(1.1)), "recording_too_long"),
    ]
    for call, error in cases:
        event, data = await call
        assert (event, data["error"]) == ("error", error), data
        assert data["detail"]
    await ws.communicator.send_to(text_data="{not json")
    assert (await ws.next())[1]["error"] == "malformed_message"
    await ws.communicator.send_to(text_data=json.dumps(["audio_chunk"]))
    assert (await ws.next())[1]["error"] == "malformed_message"
    assert await ws.chunk(pcm(0.5)) == RECEIVED
    assert await ws.chunk(pcm(0.5)) == RECEIVED
    assert (await ws.chunk(pcm(0.1)))[1]["error"] == "recording_too_long"
    assert len(await stored(hello["streaming_id"])) == 2
    await ws.disconnect()


async def test_stop_builds_the_file_and_later_chunks_are_refused():
    ws, hello = await ws_open()
    event, data = await ws.send("stop_recording")
    assert (event, data["error"]) == ("error", "empty_buffer")
    assert data["detail"] == "Audio buffer is empty"
    sent = [pcm(0.1, start=n) for n in range(3)]
    for piece in sent:
        assert await ws.chunk(piece) == RECEIVED
    event, data = await ws.send("stop_recording")
    sid = hello["streaming_id"]
    assert (event, data) == (
        "result_file_path",
        {
            "streaming_id": sid,
            "message": "Disconnected from server",
            "file_url": f"http://t/static/audio/{sid}.wav",
        },
    )
    assert (await ws.chunk(pcm(0.1)))[1]["error"] == "recording_stopped"
    assert (await ws.send("stop_recording"))[0] == "result_file_path"  # idempotent
    await ws.disconnect()
    async with http() as client:
        response = await client.get(f"/static/audio/{sid}.wav")
    assert wav_info(response.content) == (16000, 1, 2, b"".join(sent))


async def test_disconnect_saves_what_was_buffered(recordings_dir):
    ws, hello = await ws_open("sample_rate_hz=8000")
    for _ in range(4):
        assert await ws.chunk(pcm(0.25, rate=8000)) == RECEIVED
    await ws.disconnect()
    saved = await recording(hello["streaming_id"])
    assert (saved.status, saved.duration_ms, saved.file_bytes) == ("complete", 1000, 16044)
    assert (recordings_dir / f"{hello['streaming_id']}.wav").stat().st_size == 16044


async def test_disconnect_without_audio_leaves_no_record():
    ws, hello = await ws_open()
    await ws.disconnect()
    with pytest.raises(Recording.DoesNotExist):
        await recording(hello["streaming_id"])


async def test_undecodable_audio_fails_keeps_its_chunks_and_force_stop_says_so():
    ws, hello = await ws_open("format=ogg")
    assert await ws.chunk(b"OggS but not really" * 20) == RECEIVED
    await ws.disconnect()
    saved = await recording(hello["streaming_id"])
    assert saved.status == "failed" and saved.error
    assert len(await stored(hello["streaming_id"])) == 1
    response = await force_stop(headers={"X-Streaming-Key": hello["streaming_key"]})
    assert (response.status_code, response.json()) == (500, {"error": "Failed to process audio"})


async def test_idle_sessions_are_saved_and_closed(settings):
    settings.PARLEY_RECORDING_IDLE_S = 0.3
    ws, hello = await ws_open()
    assert await ws.chunk(pcm(0.1)) == RECEIVED
    event, data = await ws.next(timeout=3)
    assert (event, data["error"]) == ("error", "idle_timeout")
    event, data = await ws.next()
    assert event == "result_file_path" and data["streaming_id"] == hello["streaming_id"]
    assert await ws.closed_with() == 1000
    assert (await recording(hello["streaming_id"])).status == "complete"


@pytest.mark.parametrize(
    "how",
    [
        lambda key: {"headers": {"X-Streaming-Key": key}},
        lambda key: {"json": {"streaming_key": key}},
        lambda key: {"data": {"session_id": key}},
    ],
)
async def test_force_stop_takes_the_key_as_header_or_body_and_tells_the_client(how):
    ws, hello = await ws_open()
    assert await ws.chunk(pcm(0.3)) == RECEIVED
    response = await force_stop(**how(hello["streaming_key"]))
    assert (response.status_code, response.json()) == (
        200,
        {"message": "Audio processing complete"},
    )
    event, data = await ws.next()
    assert event == "result_file_path" and data["streaming_id"] == hello["streaming_id"]
    # Asking again is harmless: the file is there.
    again = await force_stop(**how(hello["streaming_key"]))
    assert again.status_code == 200
    await ws.disconnect()


async def test_force_stop_error_bodies_are_the_seeds():
    for kwargs in [
        {},
        {"headers": {"X-Streaming-Key": "nope"}},
        {"json": {"streaming_key": 42}},
        {"content": b"{broken", "headers": {"Content-Type": "application/json"}},
    ]:
        response = await force_stop(**kwargs)
        assert (response.status_code, response.json()) == (400, {"error": "Invalid streaming key"})
    ws, hello = await ws_open()
    empty = await force_stop(headers={"X-Streaming-Key": hello["streaming_key"]})
    assert (empty.status_code, empty.json()) == (400, {"error": "Audio buffer is empty"})
    assert await ws.chunk(pcm(0.1)) == RECEIVED  # still recording
    await ws.disconnect()
    async with http() as client:
        wrong_method = await client.get("/streaming/force_stop")
    assert (wrong_method.status_code, wrong_method.headers["allow"]) == (405, "POST")


async def test_the_file_supports_ranges_head_and_is_rebuilt_when_missing(recordings_dir):
    ws, hello = await ws_open()
    sid = hello["streaming_id"]
    async with http() as client:
        assert (await client.get(f"/static/audio/{sid}.wav")).status_code == 404  # recording
        assert (await client.get("/static/audio/unknown.wav")).status_code == 404
        for n in range(5):
            assert await ws.chunk(pcm(0.1, start=n)) == RECEIVED
        await ws.send("stop_recording")
        url = f"/static/audio/{sid}.wav"
        whole = (await client.get(url)).content
        assert len(whole) == 44 + 5 * TENTH_BYTES
        tail = await client.get(url, headers={"Range": "bytes=-100"})
        assert (tail.status_code, tail.content) == (206, whole[-100:])
        assert (
            tail.headers["content-range"]
            == f"bytes {len(whole) - 100}-{len(whole) - 1}/{len(whole)}"
        )
        head = await client.head(url)
        assert (head.status_code, head.headers["content-length"], head.content) == (
            200,
            str(len(whole)),
            b"",
        )
        assert (await client.get(url, headers={"Range": "bytes=5000000-"})).status_code == 416
        refused = await client.post(url)
        assert (refused.status_code, refused.headers["allow"]) == (405, "GET, HEAD")
        (recordings_dir / f"{sid}.wav").unlink()  # another machine built it, say
        assert (await client.get(url)).content == whole
    await ws.disconnect()


async def test_records_api_lists_and_details():
    ws, hello = await ws_open("sample_rate_hz=8000&speaker=bob")
    await ws.chunk(pcm(0.5, rate=8000))
    await ws.send("stop_recording")
    await ws.disconnect()
    sid = hello["streaming_id"]
    async with http() as client:
        listing = (await client.get("/api/recordings", params={"status": "complete"})).json()
        detail = (await client.get(f"/api/recordings/{sid}")).json()
        assert (await client.get("/api/recordings", params={"status": "nah"})).json()[
            "error"
        ] == "invalid_status"
        missing = await client.get("/api/recordings/nope")
    assert listing["count"] == 1 and listing["results"][0] == detail
    assert detail == {
        "streaming_id": sid,
        "status": "complete",
        "transport": "websocket",
        "speaker": "bob",
        "room": None,
        "format": {
            "container": "pcm",
            "sample_rate_hz": 8000,
            "channels": 1,
            "bytes_per_sample": 2,
        },
        "chunks": 1,
        "bytes": 8000,
        "duration_ms": 500,
        "file_bytes": 8044,
        "file_url": f"http://t/static/audio/{sid}.wav",
        "error": None,
        "created_at": detail["created_at"],
        "stopped_at": detail["stopped_at"],
        "completed_at": detail["completed_at"],
    }
    assert (missing.status_code, missing.json()["error"]) == (404, "not_found")


async def test_a_room_hears_the_recording_live_in_order():
    spectator = WebsocketCommunicator(application, "/spectate/ws?room=studio")
    assert (await spectator.connect())[0]
    assert (await spectator.receive_json_from())["type"] == "state"
    ws, hello = await ws_open("room=studio&speaker=narrator")
    sent = [pcm(0.1, start=n) for n in range(4)]
    for piece in sent:
        assert await ws.chunk(piece) == RECEIVED
    events = [await spectator.receive_json_from(timeout=3) for _ in sent]
    assert [e["type"] for e in events] == ["audio_chunk"] * 4
    assert [e["seq"] for e in events] == [0, 1, 2, 3]
    assert [e["offset_ms"] for e in events] == [0, 100, 200, 300]
    assert {e["stream_id"] for e in events} == {hello["streaming_id"]}
    assert {e["speaker"] for e in events} == {"narrator"}
    assert [base64.b64decode(e["data"]) for e in events] == sent
    ids = [e["id"] for e in events]
    assert ids == sorted(ids)
    logged = await database_sync_to_async(
        lambda: list(RoomEvent.objects.filter(room__name="studio").values_list("seq", flat=True))
    )()
    assert logged == ids
    await ws.disconnect()
    await spectator.disconnect()


@pytest.mark.parametrize("container", ["webm", "ogg", "mp3", "wav"])
async def test_containers_are_decoded_to_their_duration(container):
    ws, _ = await ws_open(f"format={container}&sample_rate_hz=16000")
    for piece in split(encoded_audio(container, 1.2), 4000):
        assert await ws.chunk(piece) == RECEIVED
    event, data = await ws.send("stop_recording")
    assert event == "result_file_path", data
    await ws.disconnect()
    async with http() as client:
        rate, channels, width, frames = wav_info((await client.get(data["file_url"])).content)
    assert (rate, channels, width) == (16000, 1, 2)  # resampled as asked
    assert close_enough(len(frames) / (rate * 2), 1.2)


async def test_decoded_audio_is_cut_at_the_length_limit(settings):
    settings.PARLEY_MAX_RECORDING_S = 0.5
    ws, hello = await ws_open("format=webm")
    for piece in split(encoded_audio("webm", 1.5), 4000):
        assert await ws.chunk(piece) == RECEIVED
    await ws.send("stop_recording")
    await ws.disconnect()
    assert close_enough((await recording(hello["streaming_id"])).duration_ms / 1000, 0.5)


async def test_a_stop_racing_a_chunk_never_loses_an_acknowledged_one():
    ws, hello = await ws_open()
    sid = hello["streaming_id"]
    for _ in range(3):
        await ws.chunk(pcm(0.1))
    rec = await recording(sid)
    stop = asyncio.create_task(database_sync_to_async(services.recording_stop)(recording_id=rec.pk))
    answers = [await ws.chunk(pcm(0.1)) for _ in range(3)]
    await stop
    acked = 3 + sum(1 for answer in answers if answer == RECEIVED)
    final = await recording(sid)
    assert final.stream.chunk_count == acked == len(await stored(sid))
    await ws.disconnect()


async def test_a_late_joiner_gets_a_pcm_recording_so_far_then_live():
    ws, _ = await ws_open("room=latepcm")
    sent = [pcm(0.1, start=n) for n in range(6)]
    for piece in sent[:3]:
        assert await ws.chunk(piece) == RECEIVED
    late = WebsocketCommunicator(application, "/spectate/ws?room=latepcm")
    assert (await late.connect())[0]
    state = await late.receive_json_from()
    assert state["type"] == "state" and state["stream"] is None  # a recording holds no floor
    for piece in sent[3:]:
        assert await ws.chunk(piece) == RECEIVED
    events = [await late.receive_json_from(timeout=3) for _ in sent]
    assert [e["seq"] for e in events] == list(range(6))
    assert [base64.b64decode(e["data"]) for e in events] == sent
    assert [e["id"] for e in events] == sorted({e["id"] for e in events})
    assert await late.receive_nothing(timeout=0.2)
    await ws.send("stop_recording")
    # Once stopped, it is no longer "in progress": a newcomer gets no backlog.
    newcomer = WebsocketCommunicator(application, "/spectate/ws?room=latepcm")
    assert (await newcomer.connect())[0]
    assert (await newcomer.receive_json_from())["type"] == "state"
    assert await newcomer.receive_nothing(timeout=0.2)
    await ws.disconnect()
    await late.disconnect()
    await newcomer.disconnect()


async def test_the_idle_timeout_flushes_a_live_decoder_and_ends_its_stream(settings):
    settings.PARLEY_RECORDING_IDLE_S = 0.5
    spectator = WebsocketCommunicator(application, "/spectate/ws?room=idlelive")
    assert (await spectator.connect())[0]
    assert (await spectator.receive_json_from())["type"] == "state"
    ws, hello = await ws_open("room=idlelive&format=webm")
    for piece in split(encoded_audio("webm", 1.0), 1500):
        assert await ws.chunk(piece) == RECEIVED
    event, data = await ws.next(timeout=5)
    assert (event, data["error"]) == ("error", "idle_timeout")
    assert (await ws.next())[0] == "result_file_path"
    assert await ws.closed_with() == 1000
    live_id = f"{hello['streaming_id']}:live"
    live = await database_sync_to_async(
        lambda: Stream.objects.values("status", "chunk_count", "total_bytes").get(stream_id=live_id)
    )()
    assert live["status"] == "played" and close_enough(live["total_bytes"] / 96000, 1.0, 0.045)
    heard = []
    while not await spectator.receive_nothing(timeout=0.2):
        heard.append(await spectator.receive_json_from())
    assert [m["seq"] for m in heard if m["type"] == "audio_chunk"] == list(
        range(live["chunk_count"])
    )
    await spectator.disconnect()
