"""The synthesis cache (speech.cache): a repeated request is served from disk, byte for byte,
without synthesis; what differs is synthesized; the directory stays under its bound; only
completed syntheses are stored; hits and misses are counted. Real eSpeak NG, the real ASGI
application, real files."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from pathlib import Path

import httpx
import pytest
from channels.db import database_sync_to_async

from config.asgi import application
from speech import cache
from speech.cache import AudioCache
from speech.models import SpeechJob
from speech.params import RESPONSE_FORMATS
from streams.runtime import runtime
from tests.speech.audio import decoded_seconds, sample_wav

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_recorders")]

LINE = "Halt! Who goes there? State your business, traveller."


@pytest.fixture
async def cache_dir(settings, tmp_path) -> Path:
    """The cache on, in a directory of this test's own."""
    directory = tmp_path / "tts-cache"
    settings.PARLEY_TTS_CACHE_DIR = directory
    settings.PARLEY_TTS_CACHE_MAX_BYTES = 64 * 1024 * 1024
    settings.PARLEY_TTS_CACHE_MAX_ENTRY_BYTES = 16 * 1024 * 1024
    settings.PARLEY_TTS_CACHE_ENGINES = ("espeak",)
    settings.MEDIA_ROOT = tmp_path / "media"
    runtime.ensure_started(sweeper=False)
    return directory


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


async def speak(
    client: httpx.AsyncClient, path: str = "/v1/audio/speech", **body
) -> httpx.Response:
    """POST a synthesis and wait until the cache has stored (or not) what it sent."""
    response = await client.post(path, json={"input": LINE, **body})
    assert response.status_code == 200, response.text
    await asyncio.wait_for(cache.settle(), 10)
    return response


async def row(response: httpx.Response) -> SpeechJob:
    job_id = response.headers["X-Speech-Job-Id"]
    deadline = time.monotonic() + 5
    while True:  # the recorder writes the final state, then the cache marks the row
        found = await database_sync_to_async(SpeechJob.objects.filter(pk=job_id).first)()
        if found is not None and found.status != "running" and found.cache:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} not recorded: {found and found.status}")
        await asyncio.sleep(0.02)


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tts")) if directory.exists() else []


def sse_events(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# --- hits: the same bytes, no synthesis ------------------------------------------------------


@pytest.mark.parametrize("fmt", RESPONSE_FORMATS)
async def test_a_repeated_request_is_a_hit_with_the_same_bytes(cache_dir, fmt):
    async with http() as client:
        first = await speak(client, response_format=fmt, voice="alloy")
        second = await speak(client, response_format=fmt, voice="alloy")
    assert first.headers["X-Cache"] == "MISS" and second.headers["X-Cache"] == "HIT"
    assert second.content == first.content and len(first.content) > 1000
    assert decoded_seconds(second.content, fmt) > 1.0  # a whole, playable file
    # The same headers, but for the job (each request is its own job) and X-Cache.
    same = ("X-Speech-Job-Id", "X-Cache", "Date")
    assert {k: v for k, v in first.headers.items() if k.title() not in same} == {
        k: v for k, v in second.headers.items() if k.title() not in same
    }
    assert second.headers["X-Speech-Job-Id"] != first.headers["X-Speech-Job-Id"]
    miss, hit = await row(first), await row(second)
    assert (miss.cache, miss.status) == ("miss", "completed")
    assert (hit.cache, hit.status) == ("hit", "completed")
    assert hit.engine == miss.engine == "espeak" and hit.engine_voice == miss.engine_voice
    assert hit.audio_bytes == miss.audio_bytes and hit.usage == miss.usage
    assert hit.bytes_sent == len(second.content) and hit.ttfb_ms is not None
    assert hit.first_audio_ms is None  # no engine ran
    assert len(entries(cache_dir)) == 1


async def test_sse_is_served_from_the_cache_in_the_same_events(cache_dir):
    async with http() as client:
        stored = await speak(client, response_format="mp3")  # audio stores the mp3...
        first = await speak(client, response_format="mp3", stream_format="sse")  # ...SSE hits
        second = await speak(client, response_format="mp3", stream_format="sse")
        pcm = await speak(client, stream_format="sse")  # SSE's default pcm: a miss, then a hit
        pcm_again = await speak(client, stream_format="sse")
    assert stored.headers["X-Cache"] == "MISS"
    assert [r.headers["X-Cache"] for r in (first, second, pcm, pcm_again)] == [
        "HIT",
        "HIT",
        "MISS",
        "HIT",
    ]
    for response, audio in ((first, stored.content), (second, stored.content)):
        events = sse_events(response.text)
        kinds = [kind for kind, _ in events]
        assert kinds[0] == "speech.audio.info" and kinds[-1] == "speech.audio.done"
        assert set(kinds[1:-1]) == {"speech.audio.delta"}
        info, done = events[0][1], events[-1][1]
        assert info["response_format"] == "mp3" and info["sample_rate"] == 24000
        assert info["job_id"] == done["job_id"] == response.headers["X-Speech-Job-Id"]
        deltas = b"".join(base64.b64decode(data["audio"]) for kind, data in events[1:-1])
        assert deltas == audio
    miss_events, hit_events = sse_events(pcm.text), sse_events(pcm_again.text)
    assert hit_events[0][1]["sample_rate"] == miss_events[0][1]["sample_rate"] == 24000
    assert b"".join(base64.b64decode(d["audio"]) for _, d in hit_events[1:-1]) == b"".join(
        base64.b64decode(d["audio"]) for _, d in miss_events[1:-1]
    )
    # usage is the synthesis's: the same on the hit as on the miss, and on the job.
    assert hit_events[-1][1]["usage"] == miss_events[-1][1]["usage"]
    assert (await row(pcm_again)).usage == hit_events[-1][1]["usage"]


async def test_the_seed_wav_stream_and_the_speech_wav_share_an_entry(cache_dir):
    async with http() as client:
        stream = await speak(client, "/v1/audio/speech/stream")
        speech = await speak(client, response_format="wav")
        bare = await speak(client, "/audio/speech/stream")
    assert [r.headers["X-Cache"] for r in (stream, speech, bare)] == ["MISS", "HIT", "HIT"]
    assert stream.content == speech.content == bare.content


# --- misses: whatever changes the audio ------------------------------------------------------


async def test_what_changes_the_audio_is_a_miss_and_what_does_not_is_a_hit(cache_dir):
    base = {"voice": "alloy", "response_format": "pcm", "speed": 1.0}
    async with http() as client:
        assert (await speak(client, **base)).headers["X-Cache"] == "MISS"
        for change in (
            {"voice": "echo"},  # another engine voice (en-us+m3)
            {"voice": "en-gb"},
            {"speed": 1.5},
            {"input": LINE + " Now."},
            {"input": LINE.lower()},
            {"response_format": "wav"},
            {"sample_rate": 16000},
            {"exaggeration": 1.5},
            {"streaming_strategy": "word"},
            {"streaming_quality": "high"},
        ):
            response = await speak(client, **{**base, **change})
            assert response.headers["X-Cache"] == "MISS", change
        # Knobs eSpeak accepts without effect, and the buffer (timing only), share the entry;
        # so do models that name the same engine.
        for same in (
            {"temperature": 1.5},
            {"cfg_weight": 0.9, "instructions": "Whisper."},
            {"streaming_buffer_size": 1},
            {"model": "tts-1-hd"},
            {"model": "espeak"},
        ):
            response = await speak(client, **{**base, **same})
            assert response.headers["X-Cache"] == "HIT", same
    assert len(entries(cache_dir)) == 11


async def test_a_stored_voice_hits_until_its_preset_changes(cache_dir):
    async with http() as client:
        created = await client.post("/v1/voices", json={"name": "guard", "preset": "en-gb"})
        assert created.status_code == 201, created.text
        assert (await speak(client, voice="guard")).headers["X-Cache"] == "MISS"
        assert (await speak(client, voice="guard")).headers["X-Cache"] == "HIT"
        # The engine voice is in the key, not the name: en-gb itself is the same audio.
        assert (await speak(client, voice="en-gb")).headers["X-Cache"] == "HIT"
        changed = await client.patch("/v1/voices/guard", json={"preset": "en-us"})
        assert changed.status_code == 200, changed.text
        assert (await speak(client, voice="guard")).headers["X-Cache"] == "MISS"


async def test_voice_samples_and_uncached_engines_bypass_the_cache(cache_dir, settings, standin):
    settings.PARLEY_OPENAI_TTS_URL = standin.base_url
    async with http() as client:
        upload = await client.post(
            "/v1/audio/speech/upload",
            data={"input": LINE, "model": "openai", "response_format": "pcm"},
            files={"voice_file": ("me.wav", sample_wav(), "audio/wav")},
        )
        assert upload.status_code == 200, upload.text
        stored = await client.post(
            "/v1/voices",
            data={"name": "cloned", "engine": "openai"},
            files={"voice_file": ("me.wav", sample_wav(), "audio/wav")},
        )
        assert stored.status_code == 201, stored.text
        by_sample = [await speak(client, voice="cloned", model="openai") for _ in range(2)]
        # The remote engine is not cached by default (a server may sample: another take
        # each time)...
        remote = [await speak(client, model="openai", voice="alloy") for _ in range(2)]
        settings.PARLEY_TTS_CACHE_ENGINES = ("espeak", "openai")
        # ...unless the operator says so; samples are never cached.
        enabled = [await speak(client, model="openai", voice="alloy") for _ in range(2)]
        sample_still = await speak(client, voice="cloned", model="openai")
    assert upload.headers["X-Cache"] == "BYPASS"
    assert [r.headers["X-Cache"] for r in by_sample + remote] == ["BYPASS"] * 4
    assert [r.headers["X-Cache"] for r in enabled] == ["MISS", "HIT"]
    assert enabled[1].content == enabled[0].content
    assert sample_still.headers["X-Cache"] == "BYPASS"
    assert (await row(enabled[0])).cache == "miss"
    bypassed = await database_sync_to_async(
        lambda: SpeechJob.objects.filter(pk=remote[0].headers["X-Speech-Job-Id"]).get().cache
    )()
    assert bypassed == ""


async def test_the_cache_off_means_no_directory_and_no_header_claiming_a_hit(cache_dir, settings):
    settings.PARLEY_TTS_CACHE_MAX_BYTES = 0
    async with http() as client:
        responses = [await speak(client) for _ in range(2)]
    assert [r.headers["X-Cache"] for r in responses] == ["BYPASS", "BYPASS"]
    assert not cache_dir.exists()


async def test_bad_input_is_still_refused_before_the_cache(cache_dir):
    async with http() as client:
        await speak(client, voice="alloy")
        unknown = await client.post("/v1/audio/speech", json={"input": LINE, "voice": "nvoa"})
        silent = await client.post("/v1/audio/speech", json={"input": "..."})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "voice_not_found"
    assert silent.status_code == 422 and silent.json()["error"]["code"] == "no_audio"


# --- only completed syntheses are stored -----------------------------------------------------


async def _disconnect_after_first_audio(body: dict) -> list[dict]:
    """POST through the real ASGI app; the client disconnects once the first audio bytes
    arrived. Returns what the app sent."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/audio/speech",
        "raw_path": b"/v1/audio/speech",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"t"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 50000),
        "server": ("t", 80),
    }
    sent: list[dict] = []
    got_audio = asyncio.Event()
    requests = iter([{"type": "http.request", "body": payload, "more_body": False}])

    async def receive() -> dict:
        message = next(requests, None)
        if message is not None:
            return message
        await got_audio.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            got_audio.set()

    await asyncio.wait_for(application(scope, receive, send), 30)
    return sent


def response_start(sent: list[dict]) -> tuple[dict, dict[str, str]]:
    start = next(message for message in sent if message["type"] == "http.response.start")
    return start, {name.decode().lower(): value.decode() for name, value in start["headers"]}


LONG = " ".join(
    f"Sentence number {n} of a long speech that nobody hears to the end." for n in range(60)
)


@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_a_client_that_leaves_stores_nothing(cache_dir, stream_format):
    body = {"input": LONG, "response_format": "mp3", "stream_format": stream_format}
    sent = await _disconnect_after_first_audio(body)
    start, headers = response_start(sent)
    assert start["status"] == 200 and headers["x-cache"] == "MISS"
    job_id = headers["x-speech-job-id"]
    await asyncio.sleep(0)
    await asyncio.wait_for(cache.settle(), 10)
    job = await database_sync_to_async(SpeechJob.objects.get)(pk=job_id)
    assert (job.status, job.cache) == ("cancelled", "miss")
    assert entries(cache_dir) == []
    async with http() as client:  # so the next identical request synthesizes again
        again = await speak(client, **body)
    assert again.headers["X-Cache"] == "MISS" and len(entries(cache_dir)) == 1


async def test_a_hit_that_the_client_leaves_is_a_cancelled_job(cache_dir):
    body = {"input": LONG, "response_format": "pcm"}  # ~40 s of pcm: many pieces
    async with http() as client:
        await speak(client, **body)
    sent = await _disconnect_after_first_audio(body)
    _, headers = response_start(sent)
    assert headers["x-cache"] == "HIT"
    job_id = headers["x-speech-job-id"]
    deadline = time.monotonic() + 5
    query = SpeechJob.objects.filter(pk=job_id).first
    while (job := await database_sync_to_async(query)()) is None or job.status == "running":
        assert time.monotonic() < deadline, "the hit's job was not recorded"
        await asyncio.sleep(0.02)
    assert (job.status, job.cache) == ("cancelled", "hit")
    assert len(entries(cache_dir)) == 1  # the entry is kept


async def test_an_entry_over_the_per_entry_cap_is_not_stored(cache_dir, settings):
    settings.PARLEY_TTS_CACHE_MAX_ENTRY_BYTES = 100_000  # the line in mp3, not in pcm
    async with http() as client:
        small = [await speak(client, response_format="mp3") for _ in range(2)]
        large = [await speak(client, response_format="pcm") for _ in range(2)]
    assert [r.headers["X-Cache"] for r in small] == ["MISS", "HIT"]
    assert len(small[0].content) < 100_000 < len(large[0].content)
    assert [r.headers["X-Cache"] for r in large] == ["MISS", "MISS"]
    assert len(entries(cache_dir)) == 1


# --- bounded: least recently used out --------------------------------------------------------


def test_eviction_keeps_the_total_under_the_maximum_least_recently_used_first(tmp_path):
    store = AudioCache(tmp_path, max_bytes=10_000, max_entry_bytes=4_000)
    keys = [cache.key_of({"n": n}) for n in range(8)]
    for n, key in enumerate(keys):
        if n:
            assert store.get(keys[0]) is not None  # read: now the most recently used
            time.sleep(0.01)  # distinct mtimes
        assert store.put(key, {"n": n}, bytes([n]) * 2_500)
        assert store.usage().bytes <= 10_000
        time.sleep(0.01)
    kept = {key for key in keys if store.get(key) is not None}
    # Three entries of ~2.6 kB fit in 10 kB: the newest two, and the first (read each time).
    assert kept == {keys[0], keys[6], keys[7]}
    assert store.get(keys[7]).audio == bytes([7]) * 2_500
    assert store.get(keys[7]).meta["n"] == 7
    assert not store.put(cache.key_of({"big": 1}), {}, b"x" * 4_000)  # over the entry cap
    assert store.clear().entries == 3 and store.usage() == cache.Usage(0, 0)


def test_damaged_or_foreign_files_are_misses_and_removed(tmp_path):
    store = AudioCache(tmp_path, max_bytes=1 << 20, max_entry_bytes=1 << 20)
    key = cache.key_of({"text": "hello"})
    store.put(key, {"a": 1}, b"\x01\x02" * 500)
    path = tmp_path / f"{key}.tts"
    path.write_bytes(path.read_bytes()[:-10])  # a crash's truncated file
    assert store.get(key) is None and not path.exists()
    path.write_bytes(b"something else entirely")
    assert store.get(key) is None and not path.exists()
    with pytest.raises(ValueError):
        store.get("../../etc/passwd")
    # A writer that died leaves a temporary file: an hour later it is swept.
    tmp = tmp_path / ".tmp-0123456789abcdef-x"
    tmp.write_bytes(b"half")
    store.evict()
    assert tmp.exists()
    os.utime(tmp, (time.time() - 7200, time.time() - 7200))
    store.evict()
    assert not tmp.exists()


def test_a_new_process_reads_what_another_stored(tmp_path):
    """Survives restarts: the entry is a file, not process state."""
    key = cache.key_of({"text": "persistent"})
    AudioCache(tmp_path, max_bytes=1 << 20, max_entry_bytes=1 << 20).put(key, {"m": 1}, b"ab")
    entry = AudioCache(tmp_path, max_bytes=1 << 20, max_entry_bytes=1 << 20).get(key)
    assert entry is not None and entry.audio == b"ab" and entry.meta["m"] == 1


async def test_requests_keep_the_directory_under_its_bound(cache_dir, settings):
    settings.PARLEY_TTS_CACHE_MAX_BYTES = 100_000  # two or three of these lines in mp3
    async with http() as client:
        for n in range(6):
            await speak(client, input=f"Line number {n}, spoken once.")
            total = sum(path.stat().st_size for path in entries(cache_dir))
            assert total <= 100_000
        info = (await client.get("/v1/audio/speech/cache")).json()
        newest = await speak(client, input="Line number 5, spoken once.")
        oldest = await speak(client, input="Line number 0, spoken once.")
    assert 2 <= len(entries(cache_dir)) < 6
    assert info["entries"] == len(entries(cache_dir)) and info["bytes"] <= 100_000
    assert newest.headers["X-Cache"] == "HIT" and oldest.headers["X-Cache"] == "MISS"


# --- operators: statistics, the cache's own endpoint -----------------------------------------


async def test_statistics_count_hits_and_misses(cache_dir):
    async with http() as client:
        await speak(client, voice="alloy")
        await speak(client, voice="alloy")
        await speak(client, voice="alloy", stream_format="sse", response_format="mp3")
        await speak(client, voice="echo")
        hit = await speak(client, voice="echo")
        await row(hit)
        bodies = [
            (await client.get(path)).json()
            for path in ("/status/statistics", "/v1/status/statistics", "/stats")
        ]
        status = (await client.get("/status?include_stats=true")).json()
    for body in bodies:
        assert body.get("cache") == {
            "enabled": True,
            "hits": 3,
            "misses": 2,
            "hit_rate": 60.0,
        }, body
        assert body["total_requests"] == 5 and body["completed_requests"] == 5
    assert status["statistics"]["cache"]["hits"] == 3


async def test_the_cache_endpoint_reports_and_clears(cache_dir, settings):
    async with http() as client:
        await speak(client)
        await speak(client, response_format="wav")
        info = (await client.get("/v1/audio/speech/cache")).json()
        on_disk = sum(path.stat().st_size for path in entries(cache_dir))
        cleared = await client.delete("/v1/audio/speech/cache")
        after = (await client.get("/audio/speech/cache")).json()
        again = await speak(client)
        refused = await client.post("/v1/audio/speech/cache")
    assert info["enabled"] is True and info["entries"] == 2
    assert info["bytes"] == on_disk > 0
    assert info["max_bytes"] == 64 * 1024 * 1024 and info["engines"] == ["espeak"]
    assert cleared.status_code == 200
    assert cleared.json() == {"cleared_entries": 2, "cleared_bytes": on_disk}
    assert after["entries"] == 0 and after["bytes"] == 0
    assert again.headers["X-Cache"] == "MISS"
    assert refused.status_code == 405 and refused.headers["Allow"] == "GET, DELETE"


async def test_clearing_needs_a_key_when_keys_are_required(cache_dir, settings):
    settings.PARLEY_REQUIRE_AUTH = True
    async with http() as client:
        refused = await client.delete("/v1/audio/speech/cache")
        read = await client.get("/v1/audio/speech/cache")
    assert refused.status_code == 401 and read.status_code == 200


async def test_the_admin_shows_whether_a_job_came_from_the_cache(cache_dir, admin_client):
    async with http() as client:
        await speak(client)
        hit = await speak(client)
    await row(hit)
    page = await database_sync_to_async(admin_client.get)("/admin/speech/speechjob/?cache=hit")
    assert page.status_code == 200
    assert hit.headers["X-Speech-Job-Id"][:8] in page.content.decode()
