"""POST /api/rooms/{room}/say: text spoken into a room through POST /audio's path."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import struct

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from speech.models import SpeechJob
from streams.models import Chunk, Stream
from tests.chat.conftest import asgi, http

pytestmark = pytest.mark.django_db(transaction=True)

RELEASE = ["playback_done", "speech", "input", "input", "turn", "state"]


async def spectate(room: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/spectate/ws?room={room}")
    connected, _ = await communicator.connect()
    assert connected
    state = await communicator.receive_json_from()
    assert state["type"] == "state"
    return communicator


async def until_released(communicator: WebsocketCommunicator) -> list[dict]:
    seen: list[dict] = []
    while True:
        message = await communicator.receive_json_from(timeout=10)
        seen.append(message)
        if message["type"] == "turn" and message["status"] == "released":
            seen.append(await communicator.receive_json_from(timeout=5))  # the final state
            return seen


async def test_spectators_hear_the_text_then_the_release():
    spectator = await spectate("say-hall")
    text = "Welcome to the hall, traveller."
    async with http() as client:
        response = await client.post(
            "/api/rooms/say-hall/say", json={"speaker": "npc-1", "text": text, "voice": "alloy"}
        )
    assert response.status_code == 200, response.text
    said = response.json()
    assert said["stream_id"].startswith("say-") and said["speaker"] == "npc-1"
    assert said["turn"]["status"] == "finalized" and said["turn"]["speaker"] == "npc-1"
    assert said["status"] == "playing"
    assert said["sample_rate_hz"] == 22050 and said["engine"] == "espeak"
    assert said["voice"] == "en-us" and said["text"] == text
    assert 1000 < said["duration_ms"] < 4000 and said["playback_ends_at"]

    events = await until_released(spectator)
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["turn", "state"] and events[0]["status"] == "claimed"
    chunks = [e for e in events if e["type"] == "audio_chunk"]
    assert kinds == ["turn", "state"] + ["audio_chunk"] * len(chunks) + RELEASE
    assert [c["seq"] for c in chunks] == list(range(said["chunks"]))
    assert {c["sample_rate_hz"] for c in chunks} == {22050}
    offsets = [c["offset_ms"] for c in chunks]
    assert offsets == sorted(offsets) and offsets[1] == 200  # 200 ms pieces by default
    audio = b"".join(base64.b64decode(c["data"]) for c in chunks)
    assert len(audio) == said["bytes"]
    assert max(abs(s) for s in struct.unpack(f"<{len(audio) // 2}h", audio)) > 1000  # speech
    speech = next(e for e in events if e["type"] == "speech")
    assert (speech["text"], speech["speaker"]) == (text, "npc-1")
    assert events[-2]["status"] == "released" and events[-1]["speaker"] is None
    job = await database_sync_to_async(SpeechJob.objects.get)(kind="say")
    assert job.status == "completed" and job.endpoint == "/api/rooms/say-hall/say"
    assert 0 < job.bytes_sent <= said["bytes"] == job.audio_bytes
    await spectator.disconnect()


async def test_speech_goes_on_when_the_http_client_hangs_up():
    spectator = await spectate("say-porch")
    hang_up = asyncio.Event()
    text = "Spoken to the end, whoever stops listening."
    call = asyncio.create_task(
        asgi(
            "POST",
            "/api/rooms/say-porch/say",
            {"speaker": "npc", "text": text, "chunk_ms": 20},
            hang_up=hang_up,
        )
    )
    while (await spectator.receive_json_from(timeout=5))["type"] != "audio_chunk":
        pass
    hang_up.set()
    answered = await call
    assert answered.status == 0  # the client was gone before the answer
    events = await until_released(spectator)
    assert [e["type"] for e in events][-len(RELEASE) :] == RELEASE
    stream = await database_sync_to_async(Stream.objects.get)(speaker="npc")
    assert stream.status == "played" and stream.speech_text == text
    await spectator.disconnect()


async def test_the_audio_is_a_stream_like_any_posted_one():
    async with http() as client:
        said = (
            await client.post(
                "/api/rooms/say-r2/say",
                json={
                    "speaker": "bard",
                    "text": "La la la.",
                    "stream_id": "song-1",
                    "chunk_ms": 50,
                },
            )
        ).json()
        listed = (await client.get("/api/streams?room=say-r2")).json()
        wav = await client.get("/api/streams/song-1/audio.wav")
    assert said["stream_id"] == "song-1"
    stream = await database_sync_to_async(Stream.objects.get)(stream_id="song-1")
    assert stream.speech_text == "La la la." and stream.sample_rate_hz == 22050
    assert stream.chunk_count == said["chunks"] > 5
    sizes = await database_sync_to_async(list)(
        Chunk.objects.filter(stream=stream).order_by("seq").values_list("size", flat=True)
    )
    assert set(sizes[:-1]) == {2204}  # 50 ms at 22050 Hz, 16-bit mono
    assert listed["results"][0]["stream_id"] == "song-1"
    assert wav.status_code == 200 and len(wav.content) == 44 + said["bytes"]


async def test_floor_held_by_someone_else_is_409_and_nothing_is_spoken():
    async with http() as client:
        claim = await client.post("/api/rooms/say-r3/floor", json={"speaker": "alice"})
        assert claim.status_code == 201
        response = await client.post(
            "/api/rooms/say-r3/say", json={"speaker": "bob", "text": "Hi."}
        )
        assert response.status_code == 409
        body = response.json()
        assert (body["error"], body["holder"]) == ("floor_held", "alice")
        # The holder itself may speak in its claimed turn.
        own = await client.post("/api/rooms/say-r3/say", json={"speaker": "alice", "text": "Hi."})
        assert own.status_code == 200, own.text
        assert own.json()["turn"]["turn_id"] == claim.json()["turn_id"]
        # ... but not a second text while the first is still playing.
        busy = await client.post(
            "/api/rooms/say-r3/say", json={"speaker": "alice", "text": "Again."}
        )
        assert busy.status_code == 409 and busy.json()["error"] == "floor_busy"
    assert await database_sync_to_async(Stream.objects.filter(speaker="bob").exists)() is False
    # bob's and alice's second synthesis, stopped at the first chunk; the job rows are
    # written after the answer, so a loaded machine may need a moment.
    count = database_sync_to_async(SpeechJob.objects.filter(status="cancelled").count)
    for _ in range(100):
        if (cancelled := await count()) == 2:
            break
        await asyncio.sleep(0.05)
    assert cancelled == 2


async def test_bad_voice_is_refused_before_any_turn():
    spectator = await spectate("say-r4")
    async with http() as client:
        response = await client.post(
            "/api/rooms/say-r4/say",
            json={"speaker": "npc", "text": "Hi.", "voice": "no-such-voice"},
        )
    assert response.status_code == 404
    assert (response.json()["error"], response.json()["field"]) == ("voice_not_found", "voice")
    assert "alloy" in response.json()["detail"]  # the valid names, in the message
    assert await spectator.receive_nothing(timeout=0.2)
    await spectator.disconnect()


@pytest.mark.parametrize(
    ("room", "body", "status", "field"),
    [
        ("say-r5", {"speaker": "npc"}, 400, "text"),
        ("say-r5", {"speaker": "npc", "text": ""}, 400, "text"),
        ("say-r5", {"speaker": "no spaces", "text": "Hi."}, 400, "speaker"),
        ("say-r5", {"speaker": "npc", "text": "Hi.", "speed": 0}, 400, "speed"),
        ("say-r5", {"speaker": "npc", "text": "Hi.", "chunk_ms": 5}, 400, "chunk_ms"),
        ("say-r5", {"speaker": "npc", "text": "Hi.", "stream_id": "a b"}, 400, "stream_id"),
        ("say-r5", {"speaker": "npc", "text": "Hi.", "loud": True}, 400, "loud"),
        ("say-r5", {"speaker": 5, "text": "Hi."}, 400, "speaker"),
        ("say-r5", {"speaker": "npc", "text": 5}, 400, "text"),
        ("say-r5", {"speaker": "npc", "text": "Hi.", "voice": 5}, 400, "voice"),
        ("say-r5", {"speaker": "npc", "text": "Hi.", "stream_id": 7}, 400, "stream_id"),
        ("say-r5", {"speaker": "npc", "text": "\udfff"}, 400, "text"),
        ("bad room!", {"speaker": "npc", "text": "Hi."}, 400, "room"),
    ],
)
async def test_bad_say_input(room, body, status, field):
    async with http() as client:
        # json.dumps escapes a lone surrogate as \\udfff (httpx's json= cannot encode it).
        response = await client.post(
            f"/api/rooms/{room}/say",
            content=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert set(response.json()) >= {"error", "detail", "field"}


async def test_a_64_character_room_name_fits_the_job_record():
    # /api/rooms/{64 characters}/say is 79 characters: PostgreSQL refuses what does not fit
    # the column (SQLite does not check), so the record is validated as PostgreSQL would.
    room = "r" * 64
    async with http() as client:
        response = await client.post(
            f"/api/rooms/{room}/say", json={"speaker": "npc", "text": "Hi.", "chunk_ms": 500}
        )
    assert response.status_code == 200, response.text
    job = await database_sync_to_async(SpeechJob.objects.get)(kind="say")
    assert job.endpoint == f"/api/rooms/{room}/say"
    await database_sync_to_async(job.full_clean)()


async def test_no_engine_is_503_in_the_project_shape(broken_tts):
    async with http() as client:
        response = await client.post("/api/rooms/say-r6/say", json={"text": "Hi."})
    assert response.status_code == 503
    assert response.json() == {
        "error": "tts_unavailable",
        "detail": "TTS service not available",
        "field": None,
    }


async def test_auth_like_the_core(require_key):
    auth = await require_key("npc-7")
    async with http() as client:
        anonymous = await client.post("/api/rooms/say-r7/say", json={"text": "Hi."})
        mismatch = await client.post(
            "/api/rooms/say-r7/say", json={"speaker": "npc-8", "text": "Hi."}, headers=auth
        )
        ok = await client.post("/api/rooms/say-r7/say", json={"text": "Hi."}, headers=auth)
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "auth_required"
    assert mismatch.status_code == 403 and mismatch.json()["error"] == "speaker_mismatch"
    assert ok.status_code == 200 and ok.json()["speaker"] == "npc-7"


async def test_a_cut_say_publishes_the_words_its_marks_say_were_heard():
    """Issue 10 §5: Parley's own TTS records word marks, so a cut is exact to the word."""
    from streams import services

    text = "Alpha bravo charlie delta echo foxtrot golf hotel india juliet."
    async with http() as client:
        said = await client.post(
            "/api/rooms/say-cut/say", json={"speaker": "bard", "text": text, "stream_id": "cut-1"}
        )
    assert said.status_code == 200, said.text
    stream = await database_sync_to_async(Stream.objects.get)(stream_id="cut-1")
    marks = stream.word_marks
    assert len(marks) == 10  # one per word, from eSpeak NG
    assert [m[0] for m in marks] == [text.index(w) for w in text.rstrip(".").split()]
    assert all(a[1] < b[1] for a, b in itertools.pairwise(marks))
    # Cut 1 ms after "echo" starts playing: five words were heard, by the marks.
    echo_ms = marks[4][1] / (stream.sample_rate_hz * 2) * 1000
    await database_sync_to_async(services.floor_yield)(
        room_name="say-cut", speaker=None, force=True, heard_ms=int(echo_ms) + 1
    )
    await database_sync_to_async(stream.refresh_from_db)()
    assert stream.speech_text == "Alpha bravo charlie delta echo"
    assert stream.script == text
