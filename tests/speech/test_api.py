"""Voices, progress (HTTP and WebSocket), models, health, memory, schema and admin, through
the real ASGI application in one loop."""

from __future__ import annotations

import io
import re
import wave

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import User

from config.asgi import application
from speech import services
from speech.models import SpeechJob, Voice
from speech.params import KNOB_FIELDS
from streams.runtime import runtime
from tests.speech.audio import sample_wav
from tests.support.errors import flat_error

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_recorders")]


@pytest.fixture(autouse=True)
def _media(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture
def cloning(settings, standin) -> str:
    """An engine that clones (the openai engine over the stand-in server); its name."""
    settings.PARLEY_OPENAI_TTS_URL = standin.base_url
    return "openai"


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


# --- voices --------------------------------------------------------------------------------


async def test_voices_list_engine_openai_and_stored_voices():
    async with http() as client:
        created = await client.post(
            "/v1/voices", json={"name": "narrator", "preset": "en-gb", "description": "calm"}
        )
        assert created.status_code == 201, created.text
        listed = (await client.get("/v1/voices")).json()
    by_name = {voice["name"]: voice for voice in listed["voices"]}
    assert by_name["alloy"]["source"] == "openai" and by_name["alloy"]["engine_voice"] == "en-us"
    assert by_name["en-us"]["source"] == "engine" and by_name["en-us"]["engine"] == "espeak"
    assert by_name["narrator"]["kind"] == "preset"
    assert by_name["narrator"]["engine_voice"] == "en-gb"
    assert listed["count"] == len(listed["voices"])


async def test_voice_crud_with_a_sample_file_and_its_download(cloning):
    sample = sample_wav(1.0)
    async with http() as client:
        created = await client.post(
            "/v1/voices",
            data={"name": "me", "language": "en", "engine": cloning},
            files={"voice_file": ("me.wav", sample, "audio/wav")},
        )
        assert created.status_code == 201, created.text
        body = created.json()
        assert body["kind"] == "sample" and body["sample"]["bytes"] == len(sample)
        assert abs(body["sample"]["seconds"] - 1.0) < 0.01
        download = await client.get("/v1/voices/me/download")
        assert download.status_code == 200 and download.content == sample
        assert download.headers["content-type"] == "audio/wav"
        patched = await client.patch("/v1/voices/me", json={"description": "my own", "name": "me2"})
        assert patched.status_code == 200 and patched.json()["name"] == "me2"
        assert (await client.get("/v1/voices/me")).status_code == 404
        # espeak cannot clone: speaking with a sample voice says so, naming what was sent.
        refused = await client.post(
            "/v1/audio/speech", json={"input": "Hi.", "voice": "me2", "model": "espeak"}
        )
        assert refused.status_code == 422
        assert flat_error(refused.json())["error"] == "voice_cloning_unsupported"
        assert refused.json()["field"] == "voice"
        assert "me2" in refused.json()["detail"] and "espeak" in refused.json()["detail"]
        assert (await client.delete("/v1/voices/me2")).status_code == 204
        assert (await client.get("/v1/voices/me2")).status_code == 404
    assert await database_sync_to_async(Voice.objects.count)() == 0


async def test_preset_voices_speak_and_download_a_preview():
    async with http() as client:
        await client.post("/v1/voices", json={"name": "deep", "preset": "en-us+m8"})
        spoken = await client.post(
            "/v1/audio/speech", json={"input": "Hello.", "voice": "deep", "response_format": "wav"}
        )
        assert spoken.status_code == 200
        preview = await client.get("/v1/voices/deep/download")
        engine_preview = await client.get("/v1/voices/en-gb-x-rp/download")
    for response in (preview, engine_preview):
        assert response.status_code == 200
        with wave.open(io.BytesIO(response.content)) as wav:
            assert wav.getnframes() > wav.getframerate()  # more than a second of speech
    job = await database_sync_to_async(SpeechJob.objects.filter(voice="deep").first)()
    assert job.engine_voice == "en-us+m8"


async def test_multipart_patch_changes_the_voice_like_json_does(cloning):
    async with http() as client:
        created = await client.post(
            "/v1/voices",
            data={"name": "mp", "engine": cloning},
            files={"voice_file": ("one.wav", sample_wav(1.0), "audio/wav")},
        )
        assert created.status_code == 201, created.text
        patched = await client.patch(
            "/v1/voices/mp",
            data={"description": "two seconds now"},
            files={"voice_file": ("two.wav", sample_wav(2.0), "audio/wav")},
        )
        assert patched.status_code == 200, patched.text
        body = patched.json()
        assert body["description"] == "two seconds now"
        assert body["sample"]["filename"] == "two.wav"
        assert abs(body["sample"]["seconds"] - 2.0) < 0.01
        # urlencoded PATCH bodies are read too
        renamed = await client.patch(
            "/v1/voices/mp",
            content=b"description=urlencoded",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert renamed.status_code == 200 and renamed.json()["description"] == "urlencoded"
        garbage = await client.patch(
            "/v1/voices/mp", files={"voice_file": ("x.wav", b"not audio at all", "audio/wav")}
        )
        unknown = await client.patch("/v1/voices/mp", **_multipart_fields(colour="red"))
        unknown_json = await client.patch("/v1/voices/mp", json={"colour": "red"})
        stored = (await client.get("/v1/voices/mp")).json()
    assert garbage.status_code == 400
    assert (flat_error(garbage.json())["error"], garbage.json()["field"]) == (
        "invalid_voice_file",
        "voice_file",
    )
    # the same refusal as the JSON PATCH gives
    assert unknown.status_code == unknown_json.status_code == 400
    assert unknown.json() == unknown_json.json()
    assert (
        flat_error(unknown.json())["error"] == "unknown_field"
        and unknown.json()["field"] == "colour"
    )
    # refusals changed nothing
    assert stored["description"] == "urlencoded" and stored["sample"]["filename"] == "two.wav"


def _multipart_fields(**fields: str) -> dict:
    """A multipart/form-data body of text fields only (httpx would send those urlencoded)."""
    boundary = "parley-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    body = ("".join(parts) + f"--{boundary}--\r\n").encode()
    return {
        "content": body,
        "headers": {"Content-Type": f"multipart/form-data; boundary={boundary}"},
    }


BAD_VOICES = [
    ({"json": {"preset": "en-us"}}, 400, "name"),
    ({"json": {"name": "bad name!", "preset": "en-us"}}, 400, "name"),
    ({"json": {"name": "alloy", "preset": "en-us"}}, 409, "name"),
    ({"json": {"name": "en-us", "preset": "en-us"}}, 409, "name"),
    ({"json": {"name": "x"}}, 400, "voice_file"),
    ({"json": {"name": "x", "preset": "nope"}}, 400, "preset"),
    ({"json": {"name": "x", "preset": "en-us", "engine": "zzz"}}, 400, "engine"),
    ({"json": {"name": "x", "preset": "en-us", "colour": 1}}, 400, "colour"),
    (
        {
            "data": {"name": "x", "engine": "openai"},
            "files": {"voice_file": ("a.wav", b"not audio", "audio/wav")},
        },
        400,
        "voice_file",
    ),
    ({"content": b"name=x", "headers": {"Content-Type": "text/plain"}}, 415, "Content-Type"),
]


async def test_a_sample_voice_for_an_engine_that_cannot_clone_is_refused(cloning):
    async with http() as client:
        refused = await client.post(
            "/v1/voices",
            data={"name": "flat"},  # blank engine: the default, espeak
            files={"voice_file": ("a.wav", sample_wav(), "audio/wav")},
        )
        assert refused.status_code == 422
        body = refused.json()
        assert (flat_error(body)["error"], body["field"]) == (
            "voice_cloning_unsupported",
            "voice_file",
        )
        assert "'espeak'" in body["detail"] and "clone" in body["detail"]
        assert (await client.get("/v1/voices/flat")).status_code == 404
        created = await client.post(
            "/v1/voices",
            data={"name": "cl", "engine": cloning},
            files={"voice_file": ("a.wav", sample_wav(), "audio/wav")},
        )
        assert created.status_code == 201, created.text
        moved = await client.patch("/v1/voices/cl", json={"engine": "espeak"})
        assert moved.status_code == 422 and moved.json()["field"] == "engine"
        assert (await client.get("/v1/voices/cl")).json()["engine"] == cloning


async def test_bad_voice_input_is_a_json_error(cloning):
    async with http() as client:  # one test, one database flush: the cases share nothing
        for request_kwargs, status, field in BAD_VOICES:
            response = await client.post("/v1/voices", **request_kwargs)
            assert response.status_code == status, (request_kwargs, response.text)
            assert response.json()["field"] == field, request_kwargs


async def test_duplicate_names_and_built_in_voices_are_conflicts():
    async with http() as client:
        assert (await client.post("/v1/voices", json={"name": "a", "preset": "en-us"})).is_success
        again = await client.post("/v1/voices", json={"name": "a", "preset": "en-us"})
        assert again.status_code == 409 and flat_error(again.json())["error"] == "voice_exists"
        built_in = await client.delete("/v1/voices/en-us")
        assert (
            built_in.status_code == 409
            and flat_error(built_in.json())["error"] == "read_only_voice"
        )
        assert (await client.delete("/v1/voices/nobody")).status_code == 404


# --- progress ------------------------------------------------------------------------------


async def test_progress_has_the_seed_shape_while_running_and_after():
    runtime.ensure_started(sweeper=False)
    async with http() as client:
        idle = (await client.get("/v1/status/progress")).json()
        assert idle["is_processing"] is False
        chunks = services.synthesis_stream(
            text="Sentence one is here. " * 40,
            model=None,
            voice=None,
            params={"streaming_chunk_size": 100},
        )
        first = await anext(chunks)
        running = (await client.get("/v1/status/progress")).json()
        assert running["is_processing"] is True and running["status"] == "generating_audio"
        assert running["job_id"] == str(first.job.id)
        assert running["current_step"] == f"Streaming audio for chunk 1/{running['total_chunks']}"
        assert running["progress_percentage"] == round(100 / running["total_chunks"], 1)
        assert running["text_preview"].startswith("Sentence one") and running[
            "text_preview"
        ].endswith("...")
        assert set(running) >= {"duration_seconds", "estimated_completion", "current_chunk"}
        async for _ in chunks:
            pass
        await first.job.recorded.wait()
        done = (await client.get(f"/v1/status/progress/{first.job.id}")).json()
        assert done["status"] == "completed" and done["progress_percentage"] == 100.0
        assert done["current_chunk"] == done["total_chunks"] == 10  # 4 sentences a piece
        assert (await client.get("/v1/status/progress")).json()["is_processing"] is False
        missing = await client.get("/v1/status/progress/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404 and missing.json()["field"] == "job_id"
        invalid = await client.get("/v1/status/progress/not-a-uuid")
        assert (
            invalid.status_code == 400 and flat_error(invalid.json())["error"] == "invalid_job_id"
        )


async def test_progress_is_pushed_to_websocket_subscribers():
    runtime.ensure_started(sweeper=False)
    everyone = WebsocketCommunicator(application, "/v1/status/progress/ws")
    assert (await everyone.connect())[0]
    chunks = services.synthesis_stream(
        text="Pushed progress. " * 30, model=None, voice=None, params={"streaming_chunk_size": 50}
    )
    first = await anext(chunks)
    one = WebsocketCommunicator(application, f"/v1/status/progress/{first.job.id}/ws")
    assert (await one.connect())[0]
    snapshot = await one.receive_json_from()
    assert snapshot["type"] == "speech.progress"
    assert snapshot["progress"]["job_id"] == str(first.job.id)
    async for _ in chunks:
        pass
    seen = []
    while not seen or seen[-1]["status"] != "completed":
        seen.append((await one.receive_json_from(timeout=3))["progress"])
    chunks_seen = [state["current_chunk"] for state in seen]
    assert chunks_seen == sorted(chunks_seen) and seen[-1]["current_chunk"] == 10
    assert (await one.receive_output(timeout=1))["type"] == "websocket.close"
    pushed = []
    while not pushed or pushed[-1]["status"] != "completed":
        pushed.append((await everyone.receive_json_from(timeout=3))["progress"])
    assert {state["job_id"] for state in pushed} == {str(first.job.id)}
    await everyone.disconnect()
    unknown = WebsocketCommunicator(
        application, "/v1/status/progress/00000000-0000-0000-0000-000000000000/ws"
    )
    await unknown.connect()
    assert (await unknown.receive_json_from())["error"] == "job_not_found"


# --- models, health, memory, schema, admin -------------------------------------------------


async def test_models_say_per_engine_what_every_knob_does():
    async with http() as client:
        body = (await client.get("/v1/models")).json()
        single = await client.get("/v1/models/tts-1")
        missing = await client.get("/v1/models/nope")
    ids = [model["id"] for model in body["data"]]
    assert {"tts-1", "tts-1-hd", "gpt-4o-mini-tts", "espeak"} <= set(ids)
    knobs = {spec.name for spec in KNOB_FIELDS} | {"speed", "sample_rate", "response_format"}
    for model in body["data"]:
        if not model["available"]:
            continue
        params = model["params"]
        covered = set(params["effective"]) | set(params["accepted_without_effect"])
        assert knobs <= covered, (model["id"], knobs - covered)
        assert not set(params["effective"]) & set(params["accepted_without_effect"])
    assert single.json()["engine"] == "espeak" and single.json()["voice_cloning"] is False
    assert missing.status_code == 404 and flat_error(missing.json())["error"] == "model_not_found"


async def test_health_and_memory():
    async with http() as client:
        health = await client.get("/health")
        memory = await client.get("/memory?cleanup=true")
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    assert health.json()["engines"]["espeak"]["available"] is True
    info = memory.json()
    assert info["memory_info"]["rss_mb"] > 10 and info["active_jobs"] == 0
    assert info["cleanup"]["performed"] is True and len(info["memory_info"]["gc_counts"]) == 3


async def test_schema_lists_every_speech_endpoint():
    async with http() as client:
        schema = (await client.get("/openapi.json?format=json")).json()
    paths = set(schema["paths"])
    expected = {
        "/v1/audio/speech",
        "/v1/audio/speech/stream",
        "/v1/audio/speech/upload",
        "/v1/audio/speech/stream/upload",
        "/audio/speech",
        "/audio/speech/stream",
        "/audio/speech/upload",
        "/audio/speech/stream/upload",
        "/v1/voices",
        "/v1/voices/{name}",
        "/v1/voices/{name}/download",
        "/v1/status/progress",
        "/v1/status/progress/{job_id}",
        "/v1/models",
        "/v1/models/{model}",
        "/health",
        "/memory",
    }
    assert expected <= paths, expected - paths
    request = schema["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]
    properties = request["application/json"]["schema"]["properties"]
    assert properties["streaming_chunk_size"] == {
        "type": "integer",
        "minimum": 50,
        "maximum": 500,
        "default": 200,
        "nullable": True,
        "description": "Characters per streaming chunk",
    }
    assert properties["response_format"]["default"] == "mp3"


async def test_schema_documents_the_plain_views_of_recordings_and_memory():
    async with http() as client:
        schema = (await client.get("/openapi.json")).json()
    paths = schema["paths"]
    force_stop = paths["/streaming/force_stop"]["post"]
    assert force_stop["operationId"] == "streaming_force_stop"
    assert {p["name"] for p in force_stop["parameters"]} == {"X-Streaming-Key"}
    assert set(
        force_stop["requestBody"]["content"]["application/json"]["schema"]["properties"]
    ) == {
        "streaming_key",
        "key",
        "session_id",
    }
    assert {"200", "400", "500"} <= set(force_stop["responses"])
    audio_file = paths["/static/audio/{sid}.wav"]
    assert set(audio_file) == {"get"}  # only the methods the annotation covers
    assert "audio/wav" in audio_file["get"]["responses"]["206"]["content"]
    assert set(paths["/memory"]) == {"get", "post"}


@pytest.mark.parametrize("page", ["/redoc", "/docs"])
async def test_docs_pages_reference_no_outside_url(page):
    async with http() as client:
        html = (await client.get(page)).text
    assert "/static/drf_spectacular_sidecar/" in html
    outside = re.findall(r"""(?:src|href)=["'](?:https?:)?//[^"']+""", html)
    assert outside == [] and "googleapis" not in html


async def test_admin_lists_jobs_with_filters_and_voices():
    runtime.ensure_started(sweeper=False)
    _pcm = [
        chunk async for chunk in services.synthesis_stream(text="Admin.", model=None, voice=None)
    ]
    await _pcm[0].job.recorded.wait()
    await database_sync_to_async(User.objects.create_superuser)("admin", "a@example.com", "pw")
    async with http() as client:
        login = await client.get("/admin/login/")
        token = login.cookies["csrftoken"]
        await client.post(
            "/admin/login/",
            data={"username": "admin", "password": "pw", "csrfmiddlewaretoken": token},
            headers={"Referer": "http://t/admin/login/"},
        )
        jobs = await client.get("/admin/speech/speechjob/?status__exact=completed")
        voices = await client.get("/admin/speech/voice/")
    assert jobs.status_code == 200 and str(_pcm[0].job.id) in jobs.text
    assert "By status" in jobs.text or "status" in jobs.text
    assert voices.status_code == 200


async def test_with_keys_required_synthesis_and_voice_writes_need_one(settings):
    settings.PARLEY_REQUIRE_AUTH = True
    from streams.auth import api_key_create

    _, key = await database_sync_to_async(api_key_create)(speaker="tts-user")
    async with http() as client:
        refused = await client.post("/v1/audio/speech", json={"input": "Hi."})
        wrong = await client.post(
            "/v1/audio/speech", json={"input": "Hi."}, headers={"Authorization": "Bearer nope"}
        )
        allowed = await client.post(
            "/v1/audio/speech",
            json={"input": "Hi.", "response_format": "wav"},
            headers={"Authorization": f"Bearer {key}"},
        )
        voice = await client.post("/v1/voices", json={"name": "v", "preset": "en-us"})
        listed = await client.get("/v1/voices")
    assert refused.status_code == 401 and flat_error(refused.json())["error"] == "auth_required"
    assert wrong.status_code == 401 and flat_error(wrong.json())["error"] == "invalid_api_key"
    assert allowed.status_code == 200 and allowed.content[:4] == b"RIFF"
    assert voice.status_code == 401 and listed.status_code == 200
