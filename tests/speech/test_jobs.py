"""Jobs of a process that died are marked abandoned; live ones are heartbeated; a client that
disconnects leaves its job in a terminal status. Real database, real sweeper, real daphne."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.utils import timezone

from config.asgi import application
from speech import services
from speech.jobs import ABANDONED, LIVE, speech_jobs_abandon_stale, speech_jobs_heartbeat
from speech.models import SpeechJob
from streams.runtime import runtime
from streams.scheduler import presence_touch, sweep_once
from tests.support.servers import PROJECT_ROOT, DaphneProcess
from tests.tts.test_openai_compat import Script, SpeechServer

PIECE = b"\x01\x00" * 2400  # 0.1 s of the stand-in's 24 kHz PCM


def make_job(*, status: str = "running", age_s: float = 0.0, heartbeat: bool = True) -> SpeechJob:
    """A job row as a process writes it, last written ``age_s`` ago."""
    moment = timezone.now() - timedelta(seconds=age_s)
    return SpeechJob.objects.create(
        kind="speech",
        status=status,
        text="A job whose process may have died.",
        engine="espeak",
        sample_rate=22050,
        current_chunk=2,
        total_chunks=5,
        created_at=moment,
        started_at=moment if status != "queued" else None,
        updated_at=moment if heartbeat else None,
    )


def live_job_for(row: SpeechJob) -> services.LiveJob:
    """A LiveJob with the row's id, as synthesis_stream registers it in this process."""
    return services.LiveJob(
        kind=row.kind,
        endpoint="",
        text=row.text,
        model="",
        engine=row.engine,
        voice="",
        engine_voice="en-us",
        sample_rate=row.sample_rate,
        engine_sample_rate=row.sample_rate,
        speed=1.0,
        speed_applied=1.0,
        params={},
        id=row.id,
        status="running",
    )


def fresh(row: SpeechJob) -> SpeechJob:
    return SpeechJob.objects.get(pk=row.pk)


# --- the sweeper, called directly ------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sweep_abandons_stale_jobs_and_leaves_fresh_and_finished_ones(settings):
    settings.PARLEY_SPEECH_JOB_STALE_S = 90
    running = make_job(age_s=120)
    queued = make_job(status="queued", age_s=120, heartbeat=False)  # only created_at to go by
    recent = make_job(age_s=10)
    finished = make_job(status="completed", age_s=1000)
    before = timezone.now()

    sweep_once()

    for row in (running, queued):
        row = fresh(row)
        assert row.status == "failed" and row.error == ABANDONED == "abandoned"
        assert "process running this job stopped" in row.error_detail
        assert row.finished_at is not None and row.finished_at >= before
        assert row.updated_at == row.finished_at
    assert fresh(recent).status == "running" and fresh(recent).updated_at == recent.updated_at
    assert fresh(recent).finished_at is None and fresh(recent).error == ""
    assert fresh(finished).status == "completed" and fresh(finished).error == ""

    # Idempotent: the next sweep (of this or any process) changes nothing.
    first_finish = fresh(running).finished_at
    assert speech_jobs_abandon_stale(keep=[]) == []
    assert fresh(running).finished_at == first_finish


@pytest.mark.django_db(transaction=True)
def test_a_job_of_this_process_is_heartbeated_and_survives_even_when_old(settings):
    settings.PARLEY_SPEECH_JOB_STALE_S = 90
    row = make_job(age_s=120)
    LIVE[row.id] = live_job_for(row)
    try:
        sweep_once()  # this process runs it: never abandoned here, heartbeat or not
        assert fresh(row).status == "running" and fresh(row).updated_at == row.updated_at

        before = timezone.now()
        presence_touch([])  # the sweeper's heartbeat
        assert fresh(row).updated_at >= before

        # Another process's sweeper (which does not know the job) now sees it alive too.
        assert speech_jobs_abandon_stale(keep=[]) == []
        assert fresh(row).status == "running"
    finally:
        LIVE.pop(row.id, None)

    # Once this process no longer runs it (it died), the job ages out.
    SpeechJob.objects.filter(pk=row.pk).update(updated_at=timezone.now() - timedelta(seconds=91))
    sweep_once()
    assert fresh(row).status == "failed" and fresh(row).error == "abandoned"


@pytest.mark.django_db(transaction=True)
def test_heartbeat_touches_only_quiet_active_jobs(settings):
    settings.PARLEY_SPEECH_JOB_STALE_S = 90
    quiet, written = make_job(age_s=40), make_job(age_s=1)
    done = make_job(status="completed", age_s=40)
    assert speech_jobs_heartbeat(job_ids=[quiet.id, written.id, done.id]) == 1
    assert fresh(quiet).updated_at > quiet.updated_at
    assert fresh(written).updated_at == written.updated_at  # its recorder wrote it just now
    assert fresh(done).updated_at == done.updated_at
    assert speech_jobs_heartbeat(job_ids=[]) == 0


# --- what clients see -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("drain_recorders")
async def test_progress_and_subscribers_see_an_abandoned_job_as_failed(settings):
    settings.PARLEY_SPEECH_JOB_STALE_S = 90
    runtime.ensure_started(sweeper=False)
    row = await database_sync_to_async(make_job)(age_s=60)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://t"
    ) as client:
        latest = (await client.get("/v1/status/progress")).json()
        assert latest["is_processing"] is True and latest["job_id"] == str(row.id)

        socket = WebsocketCommunicator(application, f"/v1/status/progress/{row.id}/ws")
        assert (await socket.connect())[0]
        snapshot = await socket.receive_json_from()
        assert snapshot["progress"]["status"] == "generating_audio"

        # The process running it died a while ago: its rows are now 100 s old.
        await database_sync_to_async(SpeechJob.objects.filter(pk=row.pk).update)(
            updated_at=timezone.now() - timedelta(seconds=100)
        )
        await database_sync_to_async(sweep_once)()

        pushed = await socket.receive_json_from(timeout=2)
        assert pushed["type"] == "speech.progress"
        assert pushed["progress"]["status"] == "error"
        assert pushed["progress"]["error"] == "abandoned"
        assert (await socket.receive_output(timeout=2))["type"] == "websocket.close"

        latest = (await client.get("/v1/status/progress")).json()
        assert latest["is_processing"] is False and latest["status"] == "idle"
        assert latest["job_id"] is None
        one = (await client.get(f"/v1/status/progress/{row.id}")).json()
    assert one["is_processing"] is False
    assert one["status"] == "error" and one["job_status"] == "failed"
    assert one["error"] == "abandoned"
    assert one["current_step"] == "Failed at chunk 2/5: abandoned"
    assert one["estimated_completion"] is None
    assert set(one) >= {
        "current_chunk",
        "total_chunks",
        "progress_percentage",
        "duration_seconds",
        "text_preview",
    }


# --- a live, stalled synthesis in this process ------------------------------------------------


@pytest.fixture
def stalled_upstream(standin: SpeechServer, settings) -> SpeechServer:
    """model="openai" against the stand-in, which sends one piece and then stalls for 5 s."""
    settings.PARLEY_OPENAI_TTS_URL = standin.base_url
    standin.reset(Script(pieces=[PIECE] * 3, delay=0.01, stall_after=1))
    return standin


async def _row(job_id) -> SpeechJob | None:
    return await database_sync_to_async(SpeechJob.objects.filter(pk=job_id).first)()


async def _wait_for_row(job_id, predicate, timeout: float = 5.0) -> SpeechJob:
    deadline = time.monotonic() + timeout
    while True:
        row = await _row(job_id)
        if (row is not None and predicate(row)) or time.monotonic() > deadline:
            assert row is not None, f"no row for job {job_id}"
            return row
        await asyncio.sleep(0.05)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("drain_recorders")
async def test_the_running_sweeper_heartbeats_a_stalled_job_and_abandons_orphans(
    settings, stalled_upstream
):
    settings.PARLEY_SPEECH_JOB_STALE_S = 1.5
    settings.PARLEY_SWEEP_INTERVAL_S = 0.1
    runtime.ensure_started(sweeper=True)  # the real per-process sweeper, on this loop
    chunks = services.synthesis_stream(text="Stalled upstream.", model="openai", voice=None)
    first = await anext(chunks)
    job_id = first.job.id
    inserted = await _wait_for_row(job_id, lambda row: True)
    orphan = await database_sync_to_async(make_job)(age_s=10)  # its process is gone

    await asyncio.sleep(2.5)  # the upstream sends nothing: no progress to write
    row = await _row(job_id)
    assert row.status == "running"
    assert row.updated_at > inserted.updated_at + timedelta(seconds=1)  # heartbeated
    assert timezone.now() - row.updated_at < timedelta(seconds=1.5)
    gone = await _row(orphan.id)
    assert gone.status == "failed" and gone.error == "abandoned"

    await chunks.aclose()
    await first.job.recorded.wait()
    row = await _row(job_id)
    assert row.status == "cancelled" and row.finished_at is not None


# --- a client that disconnects -----------------------------------------------------------------


async def _disconnecting_request(path: str, body: dict, *, after_body: bool) -> list[dict]:
    """POST through the real ASGI app; the client disconnects after the first audio bytes
    (``after_body``) or 0.3 s after sending its request (while synthesis awaits its first
    chunk). Returns what the app sent."""
    payload = json.dumps(body).encode()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
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
        if after_body:
            await got_audio.wait()
        else:
            await asyncio.sleep(0.3)
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "http.response.body" and message.get("body"):
            got_audio.set()

    await asyncio.wait_for(application(scope, receive, send), 10)
    return sent


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("drain_recorders")
@pytest.mark.parametrize("after_body", [True, False], ids=["mid-stream", "before-audio"])
@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_a_client_disconnect_ends_the_job_cancelled(
    stalled_upstream, after_body, stream_format
):
    runtime.ensure_started(sweeper=False)
    if not after_body:
        stalled_upstream.reset(Script(pieces=[PIECE] * 3, delay=0.01, stall_after=0))
    started = timezone.now()
    sent = await _disconnecting_request(
        "/v1/audio/speech",
        {
            "model": "openai",
            "input": "Disconnect me.",
            "response_format": "pcm",
            "stream_format": stream_format,
        },
        after_body=after_body,
    )
    if after_body:
        start = next(message for message in sent if message["type"] == "http.response.start")
        assert start["status"] == 200
    else:
        assert not any(message["type"] == "http.response.body" for message in sent)
    await asyncio.sleep(0)  # let closed generators' finalizers run
    row = await _wait_for_row_created_since(started, lambda row: row.status != "running")
    assert row.status == "cancelled" and row.error == "cancelled"
    assert row.finished_at is not None and row.finished_at >= started


async def _wait_for_row_created_since(moment: datetime, predicate) -> SpeechJob:
    deadline = time.monotonic() + 5
    while True:
        row = await database_sync_to_async(
            SpeechJob.objects.filter(created_at__gte=moment).order_by("-created_at").first
        )()
        if (row is not None and predicate(row)) or time.monotonic() > deadline:
            assert row is not None, "the synthesis recorded no job"
            return row
        await asyncio.sleep(0.05)


# --- two real daphne processes: one is killed mid-synthesis --------------------------------


def _query(db: str, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=5) as connection:
        return connection.execute(sql, args).fetchall()


def _wait(condition, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(step)


def test_a_killed_process_leaves_its_job_to_another_process_which_abandons_it(
    standin: SpeechServer, tmp_path
):
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(tmp_path),
        "PARLEY_OPENAI_TTS_URL": standin.base_url,
        "PARLEY_SPEECH_JOB_STALE_S": "2",
        "PARLEY_SWEEP_INTERVAL_S": "0.2",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    db = str(tmp_path / "parley.sqlite3")
    assert os.path.exists(db), sorted(os.listdir(tmp_path))
    doomed = DaphneProcess(env=env, name="daphne-doomed")
    survivor = DaphneProcess(env=env, name="daphne-survivor")
    try:
        # One piece, a 5 s stall, then 10 s of steady pieces: running whenever it is killed.
        standin.reset(Script(pieces=[PIECE] * 1000, delay=0.01, stall_after=1))
        client = httpx.Client(timeout=10)
        response = client.send(
            client.build_request(
                "POST",
                f"{doomed.url}/v1/audio/speech",
                json={"model": "openai", "input": "A long story.", "response_format": "pcm"},
            ),
            stream=True,
        )
        job_id = response.headers["x-speech-job-id"]
        body = response.iter_raw()  # held: closing it would disconnect (and cancel the job)
        next(body)
        hex_id = job_id.replace("-", "")  # Django stores UUIDs as 32 hex digits in SQLite
        status = "SELECT status, error, finished_at FROM speech_speechjob WHERE id = ?"
        assert _wait(lambda: _query(db, status, hex_id), 5) == [("running", "", None)]

        # Stalled for longer than the stale time: the survivor's sweeper must not take the
        # doomed process's silence for death while that process heartbeats its job.
        time.sleep(3.5)
        assert _query(db, status, hex_id) == [("running", "", None)]
        assert httpx.get(f"{survivor.url}/v1/status/progress").json()["job_id"] == job_id

        killed_at = time.monotonic()
        doomed.kill()
        response.close()
        rows = _wait(lambda: _query(db, status + " AND status != 'running'", hex_id), 6)
        assert time.monotonic() - killed_at < 6
        assert rows and rows[0][:2] == ("failed", "abandoned") and rows[0][2] is not None

        progress = httpx.get(f"{survivor.url}/v1/status/progress/{job_id}").json()
        assert progress["status"] == "error" and progress["error"] == "abandoned"
        latest = httpx.get(f"{survivor.url}/v1/status/progress").json()
        assert latest["is_processing"] is False and latest["status"] == "idle"
    finally:
        doomed.stop()
        survivor.stop()
