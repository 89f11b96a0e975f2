"""POST /chat and its audio (seed 004) through the real ASGI app and the real espeak engine."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async

from chat.models import AudioStatus, ChatExchange
from chat.openapi import CHAT_RESPONSE
from speech.models import SpeechJob
from speech.services import active_jobs
from tests.chat.conftest import NOT_FOUND, UNAVAILABLE, asgi, http, read_wav

pytestmark = pytest.mark.django_db(transaction=True)

SEED_KEYS = set(CHAT_RESPONSE["required"])
LONG_TEXT = "say " + " ".join(
    f"Sentence number {n} keeps the engine busy for a little while." for n in range(60)
)


async def chat(client, status: int = 200, **body):
    response = await client.post("/chat", json=body)
    assert response.status_code == status, response.text
    return response.json()


async def test_text_only_answer_has_the_seed_shape():
    async with http() as client:
        body = await chat(client, text="Hello Jarvis", user="ada")
    assert set(body) == SEED_KEYS
    assert body["response"] == "Hello, ada! How can I help you?"
    assert body["provider_used"] == "builtin"
    assert body["current_user"] == "ada"
    assert body["audio_url"] is None and body["stream_url"] is None
    assert isinstance(body["processing_time"], float) and body["processing_time"] >= 0
    assert len(body["request_id"]) == 32
    row = await database_sync_to_async(ChatExchange.objects.get)(request_id=body["request_id"])
    assert (row.text, row.audio_status) == ("Hello Jarvis", AudioStatus.NONE)


async def test_saved_wav_file_mode():
    async with http() as client:
        body = await chat(client, text="say The quick brown fox.", use_tts=True)
        assert body["current_user"] == "anonymous"
        assert body["stream_url"] is None
        assert body["audio_url"] == f"/audio/{body['request_id']}.wav"
        audio = await client.get(body["audio_url"])
        again = await client.get(body["audio_url"])  # a file: served as often as asked
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    assert audio.content[4:8] != b"\xff\xff\xff\xff"  # real sizes in a saved file
    rate, channels, seconds = read_wav(audio.content)
    assert (rate, channels) == (22050, 1)
    assert 0.8 < seconds < 4.0
    assert again.content == audio.content
    job = await database_sync_to_async(SpeechJob.objects.get)(kind="chat")
    assert job.status == "completed" and job.text == "The quick brown fox."


async def test_stream_url_streams_a_wav_once_then_is_cleaned_up():
    async with http() as client:
        body = await chat(client, text="say The quick brown fox.", use_tts=True, stream_audio=True)
        assert body["audio_url"] is None
        assert body["stream_url"] == f"/audio/stream/{body['request_id']}"
        # A page on another origin (Origin sent) may play it: CORS, tests/test_cors.py.
        first = await asgi("GET", body["stream_url"], headers={"Origin": "https://app.example"})
        assert first.status == 200, first.body
        assert first.headers["content-type"] == "audio/wav"
        assert first.headers["cache-control"].startswith("no-cache")
        assert first.headers["access-control-allow-origin"] == "*"
        assert first.body[:4] == b"RIFF" and first.body[4:8] == b"\xff\xff\xff\xff"
        rate, channels, seconds = read_wav(first.body)
        assert (rate, channels) == (22050, 1)
        assert 0.8 < seconds < 4.0
        # 4 KB pieces, the header riding in the first; only the last is shorter.
        assert {len(p) for p in first.pieces[:-1]} == {4096}
        assert 0 < len(first.pieces[-1]) <= 4096
        again = await client.get(body["stream_url"])
    assert again.status_code == 404 and again.json() == NOT_FOUND
    row = await database_sync_to_async(ChatExchange.objects.get)(request_id=body["request_id"])
    assert row.audio_status == AudioStatus.STREAMED and row.streamed_at is not None


async def test_the_stream_leaves_while_the_engine_still_synthesizes():
    async with http() as client:
        body = await chat(client, text=LONG_TEXT, use_tts=True, stream_audio=True)
    at_first_piece: list[tuple[str, int]] = []

    def first_piece(index: int, piece: bytes) -> None:
        if index == 0:
            at_first_piece.extend((job.status, job.audio_bytes) for job in active_jobs())

    streamed = await asgi("GET", body["stream_url"], on_piece=first_piece)
    assert streamed.status == 200
    total_pcm = len(streamed.body) - 44
    [(status, synthesized)] = at_first_piece
    assert status == "running"
    assert synthesized < total_pcm / 4, "the first piece left before most audio existed"
    _, _, seconds = read_wav(streamed.body)
    assert seconds > 60


async def test_client_hanging_up_stops_synthesis_and_keeps_the_url_usable():
    async with http() as client:
        body = await chat(client, text=LONG_TEXT, use_tts=True, stream_audio=True)
    cut = await asgi("GET", body["stream_url"], disconnect_after=2)
    assert cut.status == 200 and len(cut.pieces) < 200  # of ~2700 for the whole text
    job = await database_sync_to_async(SpeechJob.objects.get)(kind="chat")
    for _ in range(50):
        if job.status != "running":
            break
        await asyncio.sleep(0.05)
        await database_sync_to_async(job.refresh_from_db)()
    assert job.status == "cancelled"
    row = await database_sync_to_async(ChatExchange.objects.get)(request_id=body["request_id"])
    assert row.audio_status == AudioStatus.PENDING  # cut short: may be fetched again


async def test_unknown_and_expired_streams_are_404_with_the_seed_body(settings):
    settings.PARLEY_STREAM_TTL_S = 0.3
    async with http() as client:
        unknown = await client.get("/audio/stream/0123456789abcdef0123456789abcdef")
        assert unknown.status_code == 404 and unknown.json() == NOT_FOUND
        body = await chat(client, text="hello", use_tts=True, stream_audio=True)
        await asyncio.sleep(0.4)
        expired = await client.get(body["stream_url"])
        missing_file = await client.get("/audio/0123456789abcdef0123456789abcdef.wav")
    assert expired.status_code == 404 and expired.json() == NOT_FOUND
    assert missing_file.status_code == 404
    assert missing_file.json() == {"error": "Audio file not found", "code": "HTTP_404"}


async def test_no_engine_is_503_with_the_seed_body(settings, broken_tts):
    async with http() as client:
        for stream_audio in (False, True):
            response = await client.post(
                "/chat", json={"text": "hi", "use_tts": True, "stream_audio": stream_audio}
            )
            assert response.status_code == 503 and response.json() == UNAVAILABLE
        text_only = await chat(client, text="hi")  # no speech asked: still answers
        assert text_only["response"].startswith("Hello")


async def test_engine_gone_between_post_and_get_is_503_and_the_url_survives(settings):
    async with http() as client:
        body = await chat(client, text="hello", use_tts=True, stream_audio=True)
        settings.PARLEY_TTS_CONFIG = {
            "default": "piper",
            "engines": {"piper": {"model_path": "/nonexistent/x.onnx"}},
        }
        unavailable = await client.get(body["stream_url"])
        assert unavailable.status_code == 503 and unavailable.json() == UNAVAILABLE
        del settings.PARLEY_TTS_CONFIG
        streamed = await client.get(body["stream_url"])
    assert streamed.status_code == 200 and streamed.content[:4] == b"RIFF"


@pytest.mark.parametrize(
    ("body", "field", "error"),
    [
        ({}, "text", "invalid_text"),
        ({"text": ""}, "text", "invalid_text"),
        ({"text": "x" * 4097}, "text", "invalid_text"),
        ({"text": "hi", "use_tts": "maybe"}, "use_tts", "invalid_use_tts"),
        # Found by bench/fuzz: DRF took 0.0, 1, "yes" and "off" as booleans.
        ({"text": "hi", "use_tts": 0.0}, "use_tts", "invalid_use_tts"),
        ({"text": "hi", "stream_audio": "yes"}, "stream_audio", "invalid_stream_audio"),
        ({"text": "hi", "stream_audio": [1]}, "stream_audio", "invalid_stream_audio"),
        ({"text": "hi", "user": "u" * 129}, "user", "invalid_user"),
        ({"text": "hi", "colour": "red"}, "colour", "invalid_colour"),
        # DRF would coerce these to "5" / "True" and answer them: only strings are text.
        ({"text": 5}, "text", "invalid_text"),
        ({"text": True}, "text", "invalid_text"),
        ({"text": "\ud800"}, "text", "invalid_text"),
        ({"text": "hi", "user": 5}, "user", "invalid_user"),
        ([1, 2], None, "malformed_json"),
        (b"{nope", None, "malformed_json"),
    ],
)
async def test_bad_chat_input_is_a_json_error_with_the_field(body, field, error):
    exchange = await asgi("POST", "/chat", body)
    assert exchange.status == 400
    answer = exchange.json()
    assert (answer["error"], answer["field"], answer["code"]) == (error, field, "HTTP_400")
    assert answer["detail"]


async def test_methods_and_media_types():
    async with http() as client:
        wrong_method = await client.get("/chat")
        wrong_type = await client.post(
            "/chat", content=b"text=hi", headers={"content-type": "text/plain"}
        )
        post_to_stream_id = await client.post("/audio/stream/abc")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    assert wrong_type.status_code == 415 and wrong_type.json()["field"] == "Content-Type"
    assert post_to_stream_id.status_code == 405


async def test_api_keys_name_the_user_when_auth_is_required(require_key):
    auth = await require_key("ada")
    async with http() as client:
        refused = await client.post("/chat", json={"text": "hi"})
        assert refused.status_code == 401 and refused.json()["error"] == "auth_required"
        ok = await client.post("/chat", json={"text": "hi"}, headers=auth)
        assert ok.status_code == 200 and ok.json()["current_user"] == "ada"
        other = await client.post("/chat", json={"text": "hi", "user": "bob"}, headers=auth)
        assert other.status_code == 403 and other.json()["field"] == "user"
        # The stream URL itself needs no key: an <audio> element cannot send one.
        body = (
            await client.post(
                "/chat", json={"text": "hi", "use_tts": True, "stream_audio": True}, headers=auth
            )
        ).json()
        streamed = await client.get(body["stream_url"])
    assert streamed.status_code == 200


async def test_two_workers_share_pending_streams_through_the_database():
    """The pending stream is a row: claiming it is one conditional update, whoever asks."""
    async with http() as client:
        body = await chat(client, text="hello", use_tts=True, stream_audio=True)
    first, second = await asyncio.gather(
        asgi("GET", body["stream_url"]), asgi("GET", body["stream_url"])
    )
    statuses = sorted([first.status, second.status])
    assert statuses == [200, 404]


async def test_openapi_documents_the_chat_endpoints():
    async with http() as client:
        schema = (await client.get("/openapi.json?format=json")).json()
    paths = schema["paths"]
    for path in ("/chat", "/audio/stream", "/audio/stream/{request_id}", "/audio/{request_id}.wav"):
        assert path in paths
    assert "/api/rooms/{room}/say" in paths
    not_found = paths["/audio/stream/{request_id}"]["get"]["responses"]["404"]
    # The seed's shape, or ours when the id matches no route (a path that is not an id).
    shapes = not_found["content"]["application/json"]["schema"]["anyOf"]
    assert shapes[0]["required"] == ["error", "code"]
    assert shapes[1] == {"$ref": "#/components/schemas/Error"}
