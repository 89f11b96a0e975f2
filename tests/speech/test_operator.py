"""The seed system's operator endpoints (issue 10 §2) through the real ASGI application:
status, history and statistics from the SpeechJob records (rows another worker wrote
included), memory with its counter, cleanup and reset, info/ping/config/endpoints/languages,
and the voice library's aliases, default voice and rename, resolved in synthesis."""

from __future__ import annotations

import asyncio
import gc
import time
import uuid
from datetime import timedelta
from typing import Any

import httpx
import pytest
from channels.db import database_sync_to_async
from django.utils import timezone

from config.asgi import application
from speech import operator
from speech.models import JobStatus, SpeechJob
from speech.services import get_registry
from tests.support.errors import flat_error

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_recorders")]


@pytest.fixture(autouse=True)
def _media(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


async def speak(client: httpx.AsyncClient, **fields: Any) -> SpeechJob:
    """Synthesize through POST /v1/audio/speech; the job's row once its recorder wrote it."""
    answer = await client.post(
        "/v1/audio/speech", json={"input": "Hello there.", "response_format": "wav", **fields}
    )
    assert answer.status_code == 200, answer.text
    job_id = uuid.UUID(answer.headers["X-Speech-Job-Id"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        row = await database_sync_to_async(SpeechJob.objects.filter(pk=job_id).first)()
        if row is not None and row.status == JobStatus.COMPLETED:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} was not recorded as completed")


def other_worker_row(status: str, **fields: Any) -> SpeechJob:
    """A job row as another worker (or a process before a restart) wrote it."""
    now = timezone.now()
    values = {
        "kind": "speech",
        "endpoint": "/v1/audio/speech",
        "status": status,
        "text": "Written by another worker.",
        "text_chars": 26,
        "engine": "espeak",
        "sample_rate": 22050,
        "created_at": now,
        "started_at": now,
        "updated_at": now,
        **fields,
    }
    return SpeechJob.objects.create(**values)


# --- status, history, statistics -----------------------------------------------------------


async def test_status_history_and_statistics_come_from_every_workers_records():
    async with http() as client:
        idle = (await client.get("/status")).json()
        assert idle["is_processing"] is False and idle["status"] == "idle"
        assert idle["total_requests"] == 0
        first = await speak(client)
        second = await speak(client, input="A second, longer sentence to say.")
        failed = await database_sync_to_async(other_worker_row)(
            JobStatus.FAILED,
            error="synthesis_failed",
            error_detail="engine crashed",
            finished_at=timezone.now(),
        )
        running = await database_sync_to_async(other_worker_row)(
            JobStatus.RUNNING, current_chunk=1, total_chunks=4
        )
        statuses = [await client.get(path) for path in ("/status", "/v1/status", "/processing")]
        statuses.append(await client.get("/processing/status?include_stats=true"))
        history = (await client.get("/status/history?limit=10")).json()
        stats = [await client.get(path) for path in ("/status/statistics", "/stats")]
        v1_stats = await client.get("/v1/status/statistics?include_memory=true")
    for answer in statuses:
        body = answer.json()
        assert answer.status_code == 200 and body["is_processing"] is True, body
        assert body["request_id"] == str(running.id) and body["status"] == "generating_audio"
        assert body["progress"]["current_chunk"] == 1 and body["progress"]["total_chunks"] == 4
        assert body["progress"]["progress_percentage"] == 25.0
        assert body["total_requests"] == 4 and body["active_jobs"] == 1
    assert statuses[-1].json()["statistics"]["completed_requests"] == 2

    records = history["request_history"]
    assert history["total_records"] == 3 and history["limit"] == 10
    assert [r["request_id"] for r in records] == [str(failed.id), str(second.id), str(first.id)]
    assert records[0]["status"] == "error" and records[0]["error_message"] == "engine crashed"
    assert records[1]["status"] == "completed" and records[1]["text_length"] == 33
    assert records[1]["end_time"] >= records[1]["start_time"] > 0
    assert records[1]["engine"] == "espeak" and records[1]["audio_seconds"] > 0

    for answer in stats:
        body = answer.json()
        assert body["total_requests"] == 4 and body["completed_requests"] == 2
        assert body["error_requests"] == 1 and body["active_requests"] == 1
        assert body["success_rate"] == pytest.approx(66.67)
        assert body["average_duration_seconds"] > 0
        assert body["average_text_length"] == 22.5  # (12 + 33) / 2
        assert body["failures"] == {"synthesis_failed": 1} and body["is_processing"] is True
        assert body["by_engine"] == {"espeak": 4}
    assert v1_stats.json()["current_memory"]["rss_mb"] > 10


async def test_clearing_the_history_needs_confirmation_and_keeps_the_records():
    async with http() as client:
        await speak(client)
        refused = await client.post("/status/history/clear")
        refused_v1 = await client.post("/v1/status/history/clear?confirm=false")
        cleared = await client.post("/status/history/clear?confirm=true")
        history = (await client.get("/v1/status/history")).json()
        stats = (await client.get("/stats")).json()
        after = await speak(client)
        history_after = (await client.get("/status/history")).json()
    assert refused.status_code == 400
    assert flat_error(refused.json(), "/status/history/clear")["error"] == "confirmation_required"
    assert refused_v1.status_code == 400
    error = refused_v1.json()["error"]
    assert error["code"] == "confirmation_required" and error["param"] == "confirm"
    assert cleared.status_code == 200 and cleared.json()["cleared_records"] == 1
    assert history["request_history"] == [] and stats["total_requests"] == 0
    assert stats["since"] == cleared.json()["cleared_at"]
    assert [r["request_id"] for r in history_after["request_history"]] == [str(after.id)]
    # The records stay: progress by id still answers for the cleared job.
    assert await database_sync_to_async(SpeechJob.objects.count)() == 2


async def test_history_and_status_parameters_are_checked():
    async with http() as client:
        answers = [
            await client.get("/status/history?limit=0"),
            await client.get("/status/history?limit=51"),
            await client.get("/status/history?limit=ten"),
            await client.get("/status?history_limit=21"),
        ]
        answers.append(await client.get("/status?include_stats=maybe"))
        answers.append(await client.get("/memory?cleanup=please"))
        fine = await client.get("/status?include_history=yes&history_limit=20")
    for answer in answers:
        assert answer.status_code == 400, answer.text
    assert flat_error(answers[0].json())["field"] == "limit"
    assert flat_error(answers[3].json())["field"] == "history_limit"
    assert fine.status_code == 200 and fine.json()["request_history"] == []


# --- memory --------------------------------------------------------------------------------


class _Cycle:
    def __init__(self) -> None:
        self.me = self


async def test_memory_counts_requests_cleans_up_and_resets():
    async with http() as client:
        await speak(client)
        plain = (await client.get("/memory")).json()
        gc.disable()  # the garbage below must wait for the requested pass
        try:
            garbage = [_Cycle() for _ in range(2000)]
            del garbage
            cleaned = (await client.get("/v1/memory?cleanup=true")).json()
        finally:
            gc.enable()
        refused = await client.post("/memory/reset")
        reset = await client.post("/memory/reset?confirm=true")
        after_reset = (await client.get("/memory")).json()
        await speak(client)
        counted = (await client.get("/v1/memory")).json()
    assert plain["request_counter"] == 1 and plain["cleanup_performed"] is False
    assert plain["memory_info"]["cpu_memory_mb"] > 10
    assert 0 < plain["memory_info"]["cpu_memory_percent"] < 100
    assert plain["alerts"]["has_alerts"] is False and plain["pid"] > 0
    assert cleaned["cleanup_performed"] is True and cleaned["collected_objects"] >= 2000
    assert cleaned["freed"]["collected_objects"] == cleaned["collected_objects"]
    assert cleaned["freed"]["gc_objects"] >= 2000
    assert cleaned["memory_info_after_cleanup"]["rss_mb"] > 10
    assert refused.status_code == 400
    assert flat_error(refused.json())["error"] == "confirmation_required"
    assert reset.status_code == 200 and reset.json()["previous_request_counter"] == 1
    assert reset.json()["status"] == "success"
    assert after_reset["request_counter"] == 0 and counted["request_counter"] == 1


async def test_memory_config_and_recommendations():
    async with http() as client:
        config = (await client.get("/memory/config")).json()
        advice = (await client.get("/v1/memory/recommendations")).json()
    assert config["alert_thresholds"]["cpu_memory_percent"] == 85.0
    assert config["device_info"]["cuda_available"] is False
    assert config["config"]["max_total_length"] > 0
    assert advice["recommendation_count"] == len(advice["recommendations"])
    assert advice["request_counter"] == 0 and "cpu_memory_percent" in advice["memory_info"]
    found = operator.recommendations_for({"cpu_memory_percent": 91.0}, 60)
    assert {item["type"] for item in found} >= {"cpu_memory", "maintenance"}
    assert found[0]["priority"] == "high"
    alerts = operator.memory_alerts({"cpu_memory_percent": 91.0}, operator.ALERT_THRESHOLDS)
    assert alerts["alert_count"] == 1 and alerts["alerts"][0]["type"] == "cpu_memory_high"


# --- info, ping, config, endpoints, languages ----------------------------------------------


async def test_info_ping_endpoints_and_languages():
    async with http() as client:
        pings = [await client.get(path) for path in ("/ping", "/v1/ping")]
        info = (await client.get("/v1/info")).json()
        endpoints = (await client.get("/endpoints")).json()
        routes = (await client.get("/routes")).json()
        languages = (await client.get("/languages")).json()
        v1_languages = (await client.get("/v1/languages?engine=espeak")).json()
        unknown = await client.get("/v1/languages?engine=nope")
        health = await client.get("/v1/health")
    for answer in pings:
        assert answer.json() == {"status": "ok", "message": "Server is running"}
    assert info["api_name"] == "Parley" and info["status"] == "operational"
    assert info["uptime_info"]["total_requests"] == 0 and info["uptime_info"]["uptime_seconds"] > 0
    assert info["tts_status"]["is_processing"] is False
    mappings = endpoints["mappings"]
    assert set(mappings["/v1/status"]["aliases"]) == {
        "/status",
        "/processing",
        "/processing/status",
    }
    assert set(mappings["/v1/status/statistics"]["aliases"]) == {"/status/statistics", "/stats"}
    assert mappings["/v1/audio/speech"]["aliases"] == ["/audio/speech"]
    assert set(mappings["/v1/status/history"]["aliases"]) == {"/status/history", "/history"}
    assert set(mappings["/v1/endpoints"]["aliases"]) == {"/endpoints", "/routes"}
    assert "/history" not in mappings and "/processing" not in mappings
    assert mappings["/v1/memory/reset"]["total_paths"] == 2
    assert "/v1/voices/{name}/aliases/{alias}" in mappings
    assert endpoints["total_aliases"] == sum(len(m["aliases"]) for m in mappings.values())
    assert routes == endpoints
    codes = {item["code"] for item in languages["languages"]}
    assert {"en-us", "en-gb", "de"} <= codes and languages["count"] == len(codes) > 50
    assert languages["model_type"] == "multilingual" and languages["engine"] == "espeak"
    assert v1_languages == languages
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "unknown_engine"
    assert health.status_code == 200 and health.json()["status"] == "healthy"


async def test_config_shows_effective_settings_with_secrets_masked(settings):
    settings.PARLEY_LLM_KEY = "sk-live-0123456789"
    settings.PARLEY_LLM_URL = "https://bob:hunter2@llm.example/v1?api_key=abc123&x=1"
    settings.PARLEY_STT_KEY = ""
    async with http() as client:
        answer = await client.get("/config")
        v1 = await client.get("/v1/config")
    body = answer.json()
    text = answer.text
    for secret in ("sk-live-0123456789", "hunter2", "abc123", settings.SECRET_KEY):
        assert secret not in text
    shown = body["settings"]
    assert shown["PARLEY_LLM_KEY"] == operator.MASK and shown["SECRET_KEY"] == operator.MASK
    assert shown["PARLEY_LLM_URL"] == (
        f"https://bob:{operator.MASK}@llm.example/v1?api_key={operator.MASK}&x=1"
    )
    assert shown["PARLEY_STT_KEY"] == ""  # unset stays visibly unset
    assert shown["PARLEY_TTS_ENGINE"] == "espeak" and shown["PARLEY_REQUIRE_AUTH"] is False
    assert shown["DATABASES"]["default"]["ENGINE"].startswith("django.db.backends.")
    assert body["model"]["default_engine"] == "espeak" and body["defaults"]["max_total_length"]
    assert v1.json()["settings"] == shown


def test_mask_secrets_masks_database_passwords_and_url_credentials():
    masked = operator.mask_secrets(
        {
            "DATABASES": {"default": {"PASSWORD": "pw", "NAME": "parley", "PORT": 5432}},
            "REDIS_URL": "redis://:s3cret@redis:6379/0",
            "CHANNEL_LAYERS": {"default": {"CONFIG": {"hosts": ["redis://u:pw2@r:6379/1"]}}},
            "PLAIN_URL": "http://example.com/x?page=2",
            "EMPTY_TOKEN": "",
        }
    )
    assert masked["DATABASES"]["default"] == {
        "PASSWORD": operator.MASK,
        "NAME": "parley",
        "PORT": 5432,
    }
    assert masked["REDIS_URL"] == f"redis://:{operator.MASK}@redis:6379/0"
    assert masked["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"] == [
        f"redis://u:{operator.MASK}@r:6379/1"
    ]
    assert masked["PLAIN_URL"] == "http://example.com/x?page=2" and masked["EMPTY_TOKEN"] == ""


# --- voice library -------------------------------------------------------------------------


async def test_aliases_resolve_in_synthesis_and_guard_their_names():
    async with http() as client:
        created = await client.post("/v1/voices", json={"name": "narrator", "preset": "en-gb"})
        assert created.status_code == 201, created.text
        added = await client.post("/v1/voices/narrator/aliases", json={"alias": "storyteller"})
        form = await client.post("/v1/voices/narrator/aliases", data={"alias": "teller"})
        listed = (await client.get("/v1/voices/narrator/aliases")).json()
        by_alias = (await client.get("/v1/voices/teller/aliases")).json()
        refusals = {
            alias: await client.post("/v1/voices/narrator/aliases", json={"alias": alias})
            for alias in ("alloy", "en-us", "narrator", "storyteller", "bad name!", "default")
        }
        missing = await client.post("/v1/voices/narrator/aliases", json={})
        extra = await client.post("/v1/voices/narrator/aliases", json={"alias": "x", "y": 1})
        no_voice = await client.post("/v1/voices/nope/aliases", json={"alias": "nope2"})
        builtin = await client.get("/v1/voices/en-us/aliases")
        shadow = await client.post("/v1/voices", json={"name": "teller", "preset": "en-us"})
        reserved = await client.post("/v1/voices", json={"name": "all-names", "preset": "en-us"})
        job = await speak(client, voice="storyteller")
        names = (await client.get("/v1/voices/all-names")).json()
        removed = await client.delete("/v1/voices/narrator/aliases/teller")
        again = await client.delete("/v1/voices/narrator/aliases/teller")
        deleted = await client.delete("/v1/voices/narrator")
        names_after = (await client.get("/v1/voices/all-names")).json()
        gone = await client.post("/v1/audio/speech", json={"input": "Hi.", "voice": "storyteller"})
    assert added.status_code == 201 and added.json()["aliases"] == ["storyteller"]
    assert form.status_code == 201 and form.json()["aliases"] == ["storyteller", "teller"]
    assert listed == {"voice_name": "narrator", "aliases": ["storyteller", "teller"], "count": 2}
    assert by_alias["voice_name"] == "narrator"
    expected = {
        "alloy": (409, "alias_exists"),
        "en-us": (409, "alias_exists"),
        "narrator": (409, "alias_exists"),
        "storyteller": (409, "alias_exists"),
        "bad name!": (400, "invalid_alias"),
        "default": (400, "invalid_alias"),
    }
    for alias, (status, code) in expected.items():
        answer = refusals[alias]
        assert answer.status_code == status, (alias, answer.text)
        assert answer.json()["error"]["code"] == code and answer.json()["error"]["param"] == "alias"
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "missing_alias"
    assert extra.status_code == 400 and extra.json()["error"]["code"] == "unknown_field"
    assert no_voice.status_code == 404 and builtin.status_code == 404
    assert shadow.status_code == 409 and shadow.json()["error"]["code"] == "voice_exists"
    assert reserved.status_code == 400 and reserved.json()["error"]["code"] == "invalid_name"
    assert job.engine_voice == "en-gb" and job.voice == "storyteller"
    assert names["voice_names"] == ["narrator", "storyteller", "teller"] and names["count"] == 3
    assert names["aliases"] == {"storyteller": "narrator", "teller": "narrator"}
    assert removed.status_code == 200 and removed.json()["aliases"] == ["storyteller"]
    assert again.status_code == 404 and again.json()["error"]["code"] == "alias_not_found"
    assert deleted.status_code == 204 and names_after == {
        "voice_names": [],
        "count": 0,
        "aliases": {},
    }
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "voice_not_found"


async def test_default_voice_is_used_when_a_request_names_none():
    registry = get_registry()
    async with http() as client:
        await client.post("/v1/voices", json={"name": "narrator", "preset": "en-gb"})
        await client.post("/v1/voices/narrator/aliases", json={"alias": "storyteller"})
        unset = (await client.get("/v1/voices/default")).json()
        plain = await speak(client)
        chosen = await client.post("/v1/voices/default", data={"voice_name": "storyteller"})
        shown = (await client.get("/v1/voices/default")).json()
        with_default = await speak(client)
        named = await speak(client, voice="alloy")  # a named voice wins over the default
        builtin = await client.post("/v1/voices/default", json={"voice_name": "nova"})
        with_builtin = await speak(client)
        unknown = await client.post("/v1/voices/default", json={"voice_name": "nope"})
        empty = await client.post("/v1/voices/default", json={})
        reset = await client.delete("/v1/voices/default")
        after_reset = await speak(client)
        await client.post("/v1/voices/default", json={"voice_name": "narrator"})
        await client.delete("/v1/voices/narrator")
        after_delete = (await client.get("/v1/voices/default")).json()
    assert unset["default_voice"] is None and unset["source"] == "engine_default"
    assert unset["engine"] == "espeak" and unset["engine_voice"] == plain.engine_voice
    assert chosen.status_code == 200 and chosen.json()["default_voice"] == "narrator"
    assert shown["default_voice"] == "narrator" and shown["source"] == "voice_library"
    assert shown["voice_info"]["engine_voice"] == "en-gb"
    assert with_default.engine_voice == "en-gb" and with_default.voice == ""
    assert named.engine_voice == registry.map_voice("espeak", "alloy")
    assert builtin.status_code == 200 and builtin.json()["default_voice"] == "nova"
    assert with_builtin.engine_voice == registry.map_voice("espeak", "nova")
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "voice_name"
    assert empty.status_code == 400 and empty.json()["error"]["code"] == "missing_voice_name"
    assert reset.status_code == 200 and reset.json()["default_voice"] is None
    assert after_reset.engine_voice == plain.engine_voice
    assert after_delete["default_voice"] is None and after_delete["source"] == "engine_default"


async def test_rename_by_put_keeps_aliases_and_the_default():
    async with http() as client:
        await client.post("/v1/voices", json={"name": "narrator", "preset": "en-gb"})
        await client.post("/v1/voices", json={"name": "other", "preset": "en-us"})
        await client.post("/v1/voices/narrator/aliases", json={"alias": "storyteller"})
        await client.post("/v1/voices/default", json={"voice_name": "narrator"})
        renamed = await client.put("/v1/voices/narrator", data={"new_name": "bard"})
        old = await client.get("/v1/voices/narrator")
        detail = await client.get("/v1/voices/bard")
        aliases = (await client.get("/v1/voices/storyteller/aliases")).json()
        default = (await client.get("/v1/voices/default")).json()
        job = await speak(client)
        taken = await client.put("/v1/voices/bard", json={"new_name": "other"})
        openai_name = await client.put("/v1/voices/bard", json={"new_name": "alloy"})
        missing = await client.put("/v1/voices/nobody", json={"new_name": "x"})
        no_field = await client.put("/v1/voices/bard", json={})
        patched = await client.patch("/v1/voices/bard", json={"description": "still works"})
    assert renamed.status_code == 200, renamed.text
    body = renamed.json()
    assert body["old_name"] == "narrator" and body["new_name"] == "bard"
    assert body["voice"]["engine_voice"] == "en-gb"
    assert old.status_code == 404 and detail.status_code == 200
    assert aliases["voice_name"] == "bard" and default["default_voice"] == "bard"
    assert job.engine_voice == "en-gb"
    assert taken.status_code == 409 and taken.json()["error"]["param"] == "new_name"
    assert openai_name.status_code == 409
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "voice_not_found"
    assert no_field.status_code == 400 and no_field.json()["error"]["code"] == "missing_new_name"
    assert patched.status_code == 200 and patched.json()["description"] == "still works"


async def test_operator_writes_need_a_key_when_keys_are_required(settings):
    settings.PARLEY_REQUIRE_AUTH = True
    from streams.auth import api_key_create

    _, key = await database_sync_to_async(api_key_create)(speaker="operator")
    writes = [
        ("POST", "/status/history/clear?confirm=true"),
        ("POST", "/v1/memory/reset?confirm=true"),
        ("POST", "/v1/voices/default"),
        ("DELETE", "/v1/voices/default"),
        ("POST", "/v1/voices/x/aliases"),
        ("DELETE", "/v1/voices/x/aliases/y"),
        ("PUT", "/v1/voices/x"),
    ]
    async with http() as client:
        refused = [await client.request(method, path) for method, path in writes]
        reads = [await client.get(path) for path in ("/status", "/memory", "/v1/voices/default")]
        allowed = await client.delete(
            "/v1/voices/default", headers={"Authorization": f"Bearer {key}"}
        )
    for answer in refused:
        assert answer.status_code == 401, answer.request.url
    assert [answer.status_code for answer in reads] == [200, 200, 200]
    assert allowed.status_code == 200


async def test_an_active_row_of_a_dead_worker_is_not_current():
    stale = timezone.now() - timedelta(hours=1)
    await database_sync_to_async(other_worker_row)(
        JobStatus.RUNNING, created_at=stale, updated_at=stale
    )
    async with http() as client:
        body = (await client.get("/status")).json()
    assert body["is_processing"] is False and body["active_jobs"] == 0


async def test_schema_documents_every_operator_route():
    from speech.urls import OPERATOR_ROUTES

    async with http() as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    for route, _view, _name, aliases in OPERATOR_ROUTES:
        for path in (f"/{route}", f"/v1/{route}", *(f"/{alias}" for alias in aliases)):
            assert path in paths, path
    assert set(paths["/v1/voices/{name}"]) == {"get", "put", "patch", "delete"}
    assert set(paths["/v1/voices/default"]) == {"get", "post", "delete"}
    assert set(paths["/v1/voices/{name}/aliases"]) == {"get", "post"}
    assert "/v1/voices/{name}/aliases/{alias}" in paths and "/v1/voices/all-names" in paths
    confirm = paths["/memory/reset"]["post"]["parameters"][0]
    assert confirm["name"] == "confirm" and confirm["required"] is True


async def test_bare_operator_paths_are_api_paths():
    from config.handlers import API_PREFIXES
    from speech.urls import OPERATOR_ROUTES

    for route, _view, _name, aliases in OPERATOR_ROUTES:
        for path in (f"/{route}", *(f"/{alias}" for alias in aliases)):
            assert path.startswith(API_PREFIXES), path
    async with http() as client:
        unknown = await client.get("/status/nope")
        wrong_method = await client.delete("/ping")
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"
    assert wrong_method.status_code == 405 and wrong_method.headers["Allow"] == "GET"


async def test_a_default_the_chosen_engine_cannot_speak_gives_way_to_its_own(settings, standin):
    from tests.speech.audio import sample_wav

    settings.PARLEY_OPENAI_TTS_URL = standin.base_url
    async with http() as client:
        created = await client.post(
            "/v1/voices",
            data={"name": "me", "engine": "openai"},
            files={"voice_file": ("me.wav", sample_wav(1.0), "audio/wav")},
        )
        assert created.status_code == 201, created.text
        assert (await client.post("/v1/voices/default", json={"voice_name": "me"})).is_success
        plain = await speak(client, model="espeak")  # eSpeak cannot clone the sample
        named = await client.post(
            "/v1/audio/speech", json={"input": "Hi.", "model": "espeak", "voice": "me"}
        )
    assert plain.engine == "espeak" and plain.engine_voice == "en-us"  # eSpeak's default
    assert named.status_code == 422
    assert named.json()["error"]["code"] == "voice_cloning_unsupported"
