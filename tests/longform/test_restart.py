"""A long text job survives its server: a real daphne is killed mid-job, a new one on the
same database resumes from the last finished piece without redoing any, and another process
serves the job's status and file."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import wave

import httpx

from tests.longform.test_jobs import TEXT
from tests.support.servers import PROJECT_ROOT, DaphneProcess

LONG = " ".join([TEXT] * 4)


def _wait(probe, timeout: float, step: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(step)


def test_a_killed_server_s_job_resumes_from_its_last_piece_on_the_next(tmp_path):
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        # Embedded mode whatever the suite runs with: SQLite and media under a private dir.
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(tmp_path),
        "PARLEY_TTS_LONG_LEASE_S": "2",
        "PARLEY_SWEEP_INTERVAL_S": "0.3",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    first = DaphneProcess(env=env, name="daphne-long-1")
    second = None
    try:
        client = httpx.Client(timeout=30)
        created = client.post(
            f"{first.url}/v1/audio/speech/long",
            # ~9,600 characters in ~160 pieces: seconds of work, so the kill lands mid-job.
            json={"input": LONG, "chunk_size": 60, "response_format": "wav"},
        )
        assert created.status_code == 202, created.text
        job_id = created.json()["job_id"]
        total = created.json()["total_chunks"]
        status_url = f"/v1/audio/speech/long/{job_id}"

        def job(server: DaphneProcess) -> dict:
            return client.get(f"{server.url}{status_url}").json()

        _wait(lambda: job(first)["progress"]["completed_chunks"] >= 3, 60)
        first.kill()  # SIGKILL: no chance to say anything
        second = DaphneProcess(env=env, name="daphne-long-2", port=first.port)
        job_state = job(second)  # any process serves the status, from the database
        before = job_state["progress"]["completed_chunks"]
        assert 3 <= before < total
        assert job_state["status"] == "processing"  # until the dead worker's lease runs out

        done = _wait(lambda: (j := job(second))["status"] == "completed" and j, 120)
        assert done["progress"]["completed_chunks"] == total

        query = 'SELECT "index", worker FROM longform_longpiece WHERE job_id = ? ORDER BY "index"'
        import sqlite3

        with sqlite3.connect(tmp_path / "parley.sqlite3") as db:
            rows = db.execute(query, (job_id.replace("-", ""),)).fetchall()
        assert [index for index, _ in rows] == list(range(total))  # each piece once
        workers = [worker for _, worker in rows]
        # The pieces finished before the kill were kept; the rest were the new process's.
        assert len(set(workers[:before])) == 1 and len(set(workers[before:])) == 1
        assert workers[0] != workers[-1]

        download = client.get(f"{second.url}{status_url}/download")
        assert download.status_code == 200
        with wave.open(io.BytesIO(download.content)) as wav:
            seconds = wav.getnframes() / wav.getframerate()
        assert len(LONG) / 40 < seconds < len(LONG) / 5
    finally:
        first.stop()
        if second is not None:
            second.stop()
