"""Long text jobs through the real ASGI application in one loop: a real job to the end and
its file, pause/resume, cancel/retry, the lists and stats, and refusals as JSON."""

from __future__ import annotations

import asyncio
import io
import json
import time
import wave

import httpx
import pytest

from config.asgi import application
from longform import runner
from longform.models import LongJob, LongPiece
from streams.runtime import runtime

pytestmark = [pytest.mark.django_db(transaction=True)]

# About 2,400 characters of prose: 6 pieces of up to 500 characters.
SENTENCES = [
    "The lighthouse keeper climbed the stairs every evening at dusk.",
    "He counted the steps aloud, although he had known their number for years.",
    "At the top, the great lamp waited, cold and patient, for its small flame.",
    "Ships far out at sea would see the light and know the rocks were near.",
]
TEXT = " ".join(SENTENCES * 9)


@pytest.fixture(autouse=True)
def _media(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"


@pytest.fixture(autouse=True)
async def _stop_runner():
    yield
    task = runner.running_task()
    if task is not None and task.get_loop() is asyncio.get_running_loop():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    from speech.services import _RECORDERS

    if _RECORDERS:
        await asyncio.wait(list(_RECORDERS), timeout=5)


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://t", timeout=60
    )


async def wait_for(client: httpx.AsyncClient, job_id: str, predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while True:
        job = (await client.get(f"/v1/audio/speech/long/{job_id}")).json()
        if predicate(job):
            return job
        assert time.monotonic() < deadline, job
        await asyncio.sleep(0.1)


async def pieces_of(job_id: str) -> list[tuple[int, object, str]]:
    def read() -> list[tuple[int, object, str]]:
        return list(
            LongPiece.objects.filter(job_id=job_id)
            .order_by("index")
            .values_list("index", "created_at", "worker")
        )

    return await runtime.run_db(read)


async def test_a_real_job_runs_to_done_and_its_wav_has_a_plausible_duration():
    async with http() as client:
        created = await client.post(
            "/v1/audio/speech/long",
            json={"input": TEXT, "voice": "alloy", "response_format": "wav"},
        )
        assert created.status_code == 202, created.text
        body = created.json()
        job_id = body["job_id"]
        assert body["status"] == "pending" and body["total_chunks"] == 6
        assert created.headers["location"] == body["status_url"]

        job = await wait_for(client, job_id, lambda j: j["status"] == "completed")
        assert job["progress"]["overall_progress"] == 100
        assert job["progress"]["completed_chunks"] == 6
        assert job["download_url"] == f"/v1/audio/speech/long/{job_id}/download"
        download = await client.get(job["download_url"])
        assert download.status_code == 200
        assert download.headers["content-type"] == "audio/wav"
        assert download.headers["accept-ranges"] == "bytes"
        with wave.open(io.BytesIO(download.content)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
            assert wav.getnchannels() == 1 and wav.getsampwidth() == 2
        # eSpeak at 175 wpm speaks about 15 characters a second.
        assert len(TEXT) / 40 < seconds < len(TEXT) / 5, seconds
        assert job["metadata"]["output_duration_seconds"] == pytest.approx(seconds, abs=0.01)
        assert int(download.headers["content-length"]) == job["metadata"]["output_size_bytes"]

        ranged = await client.get(job["download_url"], headers={"Range": "bytes=0-43"})
        assert ranged.status_code == 206 and ranged.content == download.content[:44]

        # The pieces are in order and each was synthesized once.
        assert [index for index, *_ in await pieces_of(job_id)] == [0, 1, 2, 3, 4, 5]

        # Lists, history and stats see it.
        listed = (await client.get("/v1/audio/speech/long")).json()
        assert [j["job_id"] for j in listed["jobs"]] == [job_id]
        assert listed["total_jobs"] == 1 and listed["completed_jobs"] == 1
        assert listed["jobs"][0]["text_preview"] == TEXT[:100]
        history = (await client.get("/v1/audio/speech/long-history")).json()
        assert [j["job_id"] for j in history["jobs"]] == [job_id]
        stats = (await client.get("/v1/audio/speech/long-history/stats")).json()
        assert stats["completed_jobs"] == 1 and stats["success_rate_percentage"] == 100
        assert stats["total_audio_duration_seconds"] == pytest.approx(seconds, abs=0.01)
        assert stats["most_used_voice"] == "alloy"

        # The bare alias of the seed system answers the same job.
        assert (await client.get(f"/audio/speech/long/{job_id}")).json()["status"] == "completed"


async def test_mp3_download_decodes():
    from speech.encoding import ffmpeg_exe

    async with http() as client:
        created = await client.post(
            "/v1/audio/speech/long", json={"input": TEXT[:600], "response_format": "mp3"}
        )
        job_id = created.json()["job_id"]
        job = await wait_for(client, job_id, lambda j: j["status"] == "completed")
        download = await client.get(job["download_url"])
    assert download.headers["content-type"] == "audio/mpeg"
    process = await asyncio.create_subprocess_exec(
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", "pipe:0",
        "-f", "s16le", "-ac", "1", "-ar", "24000", "pipe:1",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    pcm, _ = await process.communicate(download.content)
    seconds = len(pcm) / 48000
    assert 600 / 40 < seconds < 600 / 5
    assert seconds == pytest.approx(job["progress"]["audio_seconds"], abs=0.2)


async def test_pause_stops_after_the_current_piece_and_resume_finishes_without_redoing():
    async with http() as client:
        created = await client.post(
            "/v1/audio/speech/long",
            json={"input": TEXT, "chunk_size": 60, "response_format": "pcm"},
        )
        job_id = created.json()["job_id"]
        total = created.json()["total_chunks"]
        assert total > 30
        await wait_for(client, job_id, lambda j: j["progress"]["completed_chunks"] >= 2)
        paused = await client.put(f"/v1/audio/speech/long/{job_id}/pause")
        assert paused.status_code == 200, paused.text
        assert paused.json()["status"] == "paused" and paused.json()["job"]["can_resume"]
        await asyncio.sleep(1.5)  # the runner notices within a second; nothing more is done
        done_while_paused = await pieces_of(job_id)
        await asyncio.sleep(1.0)
        assert await pieces_of(job_id) == done_while_paused
        assert len(done_while_paused) < total
        job = (await client.get(f"/v1/audio/speech/long/{job_id}")).json()
        assert job["status"] == "paused" and job["progress"]["current_chunk"] is None

        again = await client.put(f"/v1/audio/speech/long/{job_id}/pause")
        assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_job_state"

        resumed = await client.put(f"/v1/audio/speech/long/{job_id}/resume")
        assert resumed.status_code == 200 and resumed.json()["status"] == "pending"
        await wait_for(client, job_id, lambda j: j["status"] == "completed")
        after = await pieces_of(job_id)
        assert [index for index, *_ in after] == list(range(total))
        assert after[: len(done_while_paused)] == done_while_paused  # kept, not redone
        download = await client.get(f"/v1/audio/speech/long/{job_id}/download")

    def piece_bytes() -> int:
        return sum(LongPiece.objects.filter(job_id=job_id).values_list("audio_bytes", flat=True))

    assert len(download.content) == await runtime.run_db(piece_bytes)


async def test_cancel_then_retry_resumes_from_the_last_piece():
    async with http() as client:
        created = await client.post("/v1/audio/speech/long", json={"input": TEXT, "chunk_size": 80})
        job_id = created.json()["job_id"]
        await wait_for(client, job_id, lambda j: j["progress"]["completed_chunks"] >= 1)
        cancelled = await client.delete(f"/v1/audio/speech/long/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert cancelled.json()["can_retry"] is True
        await asyncio.sleep(1.5)
        kept = await pieces_of(job_id)
        assert kept
        early = await client.get(f"/v1/audio/speech/long/{job_id}/download")
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_completed"
        resume = await client.put(f"/v1/audio/speech/long/{job_id}/resume")
        assert resume.status_code == 409

        retried = await client.post(f"/v1/audio/speech/long/{job_id}/retry")
        assert retried.status_code == 200, retried.text
        assert retried.json()["job"]["metadata"]["retry_count"] == 1
        job = await wait_for(client, job_id, lambda j: j["status"] == "completed")
        assert job["metadata"]["error"] is None
        assert (await pieces_of(job_id))[: len(kept)] == kept

        again = await client.post(f"/v1/audio/speech/long/{job_id}/retry")
        assert again.status_code == 409

        patched = await client.patch(
            f"/v1/audio/speech/long/{job_id}",
            json={"display_name": "Chapter 1", "tags": ["book"], "is_archived": True},
        )
        assert patched.status_code == 200, patched.text
        assert patched.json()["display_name"] == "Chapter 1"
        assert patched.json()["metadata"]["tags"] == ["book"]
        hidden = (await client.get("/v1/audio/speech/long-history")).json()
        assert hidden["jobs"] == []
        shown = await client.get("/v1/audio/speech/long-history?include_archived=true")
        assert [j["job_id"] for j in shown.json()["jobs"]] == [job_id]

        deleted = await client.delete(f"/v1/audio/speech/long/{job_id}?action=delete")
        assert deleted.status_code == 200
        gone = await client.get(f"/v1/audio/speech/long/{job_id}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "job_not_found"
    assert not await runtime.run_db(lambda: LongJob.objects.exists())


async def test_sse_reports_progress_and_ends_with_the_final_state():
    async with http() as client:
        created = await client.post(
            "/v1/audio/speech/long", json={"input": TEXT[:700], "chunk_size": 200}
        )
        job_id = created.json()["job_id"]
        events: list[tuple[str, dict]] = []
        async with client.stream("GET", f"/v1/audio/speech/long/{job_id}/sse") as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            name = None
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    name = line[7:]
                elif line.startswith("data: "):
                    events.append((name, json.loads(line[6:])))
    names = [name for name, _ in events]
    assert names[-1] == "completed" and set(names[:-1]) == {"progress"}
    assert events[-1][1]["data"]["status"] == "completed"
    progress = [data["data"]["completed_chunks"] for name, data in events if name == "progress"]
    assert progress == sorted(progress) and progress[-1] == created.json()["total_chunks"]


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ({}, 422, "missing_input", "input"),
        ({"input": ""}, 422, "invalid_input", "input"),
        ({"input": "Hi there.", "speed": 9}, 422, "invalid_speed", "speed"),
        ({"input": "Hi there.", "chunk_size": 10}, 422, "invalid_chunk_size", "chunk_size"),
        ({"input": "Hi there.", "stream_format": "sse"}, 422, "unknown_field", "stream_format"),
        ({"input": "Hi there.", "response_format": "ogg"}, 422, "invalid_response_format", None),
        ({"input": "x" * 101}, 400, "input_too_long", "input"),
        ({"input": "Hi there.", "voice": "nobody"}, 404, "voice_not_found", "voice"),
        ({"input": "\u200b\u200b"}, 422, "no_audio", "input"),
    ],
)
async def test_bad_input_is_a_json_error(settings, body, status, code, param):
    settings.PARLEY_TTS_LONG_MAX_CHARS = 100
    async with http() as client:
        response = await client.post("/v1/audio/speech/long", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    if param:
        assert error["param"] == param
    assert not await runtime.run_db(lambda: LongJob.objects.exists())


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v1/audio/speech/long/nope", 400, "invalid_job_id"),
        ("GET", "/v1/audio/speech/long/6f1c8a2e-0000-4000-8000-000000000000", 404, "job_not_found"),
        ("PUT", "/v1/audio/speech/long/6f1c8a2e-0000-4000-8000-000000000000/pause", 404, None),
        ("GET", "/v1/audio/speech/long?status=odd", 400, "invalid_status"),
        ("GET", "/v1/audio/speech/long?limit=0", 400, "invalid_limit"),
        ("GET", "/v1/audio/speech/long-history?include_archived=maybe", 400, None),
        ("POST", "/v1/audio/speech/long/6f1c8a2e-0000-4000-8000-000000000000/pause", 405, None),
    ],
)
async def test_bad_requests_are_json_errors(method, path, status, code):
    async with http() as client:
        response = await client.request(method, path)
    assert response.status_code == status, response.text
    if code:
        assert response.json()["error"]["code"] == code
