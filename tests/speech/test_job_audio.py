"""Each speech job's audio is kept (bounded) and served with byte ranges (issue 9 §2)."""

from __future__ import annotations

import io
import os
import uuid
import wave

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.test import override_settings

from config.asgi import application
from speech import job_audio

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "Every job keeps what it said."


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


async def speak(client: httpx.AsyncClient, text: str = TEXT, **fields) -> httpx.Response:
    body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm", **fields}
    response = await client.post("/v1/audio/speech", json=body)
    assert response.status_code == 200, response.text
    return response


async def test_the_job_audio_is_the_pcm_that_was_sent_as_a_wav_with_ranges():
    async with http() as client:
        spoken = await speak(client)
        job_id = spoken.headers["X-Speech-Job-Id"]
        url = f"/v1/audio/speech/jobs/{job_id}/audio.wav"
        whole = await client.get(url)
        part = await client.get(url, headers={"Range": "bytes=44-143"})
        head = await client.head(url)
        beyond = await client.get(url, headers={"Range": f"bytes={10**9}-"})
    assert whole.status_code == 200 and whole.headers["Content-Type"] == "audio/wav"
    assert whole.headers["Accept-Ranges"] == "bytes"
    with wave.open(io.BytesIO(whole.content)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24000)
        assert wav.readframes(wav.getnframes()) == spoken.content
    assert part.status_code == 206 and part.content == spoken.content[:100]
    assert part.headers["Content-Range"] == f"bytes 44-143/{len(whole.content)}"
    assert head.status_code == 200 and head.content == b""
    assert beyond.status_code == 416


async def test_unknown_and_malformed_job_ids_are_clear_errors():
    async with http() as client:
        unknown = await client.get(f"/v1/audio/speech/jobs/{uuid.uuid4()}/audio.wav")
        malformed = await client.get("/v1/audio/speech/jobs/nope/audio.wav")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "job_not_found"
    assert malformed.status_code == 400
    assert malformed.json()["error"]["param"] == "job_id"


async def test_a_pruned_job_says_its_audio_is_not_kept_and_the_folder_stays_bounded(tmp_path):
    async with http() as client:
        with override_settings(PARLEY_SPEECH_AUDIO_DIR=tmp_path, PARLEY_SPEECH_AUDIO_MAX_BYTES=1):
            first = (await speak(client)).headers["X-Speech-Job-Id"]
            second = (await speak(client, "A second one.")).headers["X-Speech-Job-Id"]
            gone = await client.get(f"/v1/audio/speech/jobs/{first}/audio.wav")
            kept = list(tmp_path.glob("*.wav"))
    # One byte allowed: each job's file is pruned as soon as it is written.
    assert kept == []
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "audio_not_kept"
    assert second


async def test_the_oldest_go_first_and_a_job_stops_growing_at_its_cap(tmp_path):
    async with http() as client:
        with override_settings(
            PARLEY_SPEECH_AUDIO_DIR=tmp_path,
            PARLEY_SPEECH_AUDIO_MAX_BYTES=10_000_000,
            PARLEY_SPEECH_AUDIO_MAX_JOB_BYTES=4800,  # 100 ms at 24 kHz
        ):
            job = (await speak(client)).headers["X-Speech-Job-Id"]
            capped = await client.get(f"/v1/audio/speech/jobs/{job}/audio.wav")
    with wave.open(io.BytesIO(capped.content)) as wav:
        assert wav.getnframes() == 2400
    sizes = {path.name: path.stat().st_size for path in tmp_path.glob("*.wav")}
    assert sizes == {f"{uuid.UUID(job).hex}.wav": 44 + 4800}


def test_prune_deletes_the_oldest_first(tmp_path, settings):
    settings.PARLEY_SPEECH_AUDIO_DIR = tmp_path
    settings.PARLEY_SPEECH_AUDIO_MAX_BYTES = 250
    for n, name in enumerate(["a", "b", "c"]):
        path = tmp_path / f"{name}.wav"
        path.write_bytes(b"x" * 100)
        os.utime(path, ns=(n * 10**9, n * 10**9))
    (tmp_path / ".d.wav.part").write_bytes(b"x" * 1000)  # a job still running: never pruned
    assert job_audio.prune() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".d.wav.part", "b.wav", "c.wav"]


async def test_the_admin_plays_a_kept_job(admin_client):
    async with http() as client:
        job_id = (await speak(client)).headers["X-Speech-Job-Id"]
    page = (await sync_to_async(admin_client.get)("/admin/speech/speechjob/")).content.decode()
    assert f'src="/v1/audio/speech/jobs/{job_id}/audio.wav"' in page
