"""A real daphne process on the embedded default (SQLite, in-memory layer): a WebSocket
spectator hears text said into a room, and a chat answer streams while it is synthesized."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support.servers import PROJECT_ROOT, DaphneProcess

pytestmark = pytest.mark.timeout(90)

RELEASE = ["playback_done", "speech", "input", "input", "turn", "state"]


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[DaphneProcess]:
    var_dir: Path = tmp_path_factory.mktemp("var")
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PARLEY_VAR_DIR": str(var_dir),
        "DATABASE_URL": None,  # the embedded default, whatever this shell has set
        "REDIS_URL": None,
        "PARLEY_REQUIRE_AUTH": None,
        "PARLEY_SWEEP_INTERVAL_S": "0.2",
    }
    migrate_env = {k: v for k, v in os.environ.items() if k not in env}
    migrate_env.update({k: v for k, v in env.items() if v is not None})
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env=migrate_env,
        check=True,
    )
    process = DaphneProcess(env=env)
    try:
        yield process
    finally:
        process.stop()


async def test_a_websocket_spectator_hears_said_text(server):
    text = "Good evening. The tavern is open, and the fire is warm."
    url = f"ws://127.0.0.1:{server.port}/spectate/ws?room=chat-tavern"
    async with websockets.connect(url) as ws, httpx.AsyncClient(timeout=30) as client:
        assert json.loads(await ws.recv())["type"] == "state"
        events: list[tuple[float, dict]] = []

        async def listen() -> None:
            while True:
                message = json.loads(await ws.recv())
                events.append((time.monotonic(), message))
                if message["type"] == "turn" and message["status"] == "released":
                    events.append((time.monotonic(), json.loads(await ws.recv())))
                    return

        listener = asyncio.create_task(listen())
        response = await client.post(
            f"{server.url}/api/rooms/chat-tavern/say",
            json={"speaker": "innkeeper", "text": text, "chunk_ms": 50},
        )
        answered_at = time.monotonic()
        assert response.status_code == 200, response.text
        await asyncio.wait_for(listener, 20)
    said = response.json()
    kinds = [m["type"] for _, m in events]
    chunks = [(t, m) for t, m in events if m["type"] == "audio_chunk"]
    assert kinds == ["turn", "state"] + ["audio_chunk"] * len(chunks) + RELEASE
    assert [m["seq"] for _, m in chunks] == list(range(said["chunks"]))
    assert len(chunks) > 20
    # Heard as synthesis proceeded: the first chunk arrived before the say call returned,
    # which happens only once the last chunk is in.
    assert chunks[0][0] < answered_at
    by_type = {m["type"]: m for _, m in events}
    assert by_type["speech"]["text"] == text and by_type["speech"]["speaker"] == "innkeeper"
    assert by_type["playback_done"]["duration_ms"] == said["duration_ms"] > 2000
    assert [m["name"] for _, m in events if m["type"] == "input"] == [
        "SpeechFinished",
        "AudioEnded",
    ]
    assert events[-1][1]["speaker"] is None


async def test_a_chat_answer_streams_while_it_is_synthesized(server):
    long_text = "say " + " ".join(f"Line {n} of a long answer, read aloud." for n in range(80))
    async with httpx.AsyncClient(timeout=30) as client:
        chat = await client.post(
            f"{server.url}/chat",
            json={"text": long_text, "use_tts": True, "stream_audio": True, "user": "ada"},
        )
        assert chat.status_code == 200, chat.text
        stream_url = chat.json()["stream_url"]
        started = time.monotonic()
        first_at = None
        data = bytearray()
        async with client.stream("GET", f"{server.url}{stream_url}") as response:
            assert response.status_code == 200
            async for piece in response.aiter_raw():
                first_at = first_at or time.monotonic()
                data += piece
        total = time.monotonic() - started
        gone = await client.get(f"{server.url}{stream_url}")
    with wave.open(io.BytesIO(bytes(data))) as wav:
        assert wav.getframerate() == 22050
        seconds = len(wav.readframes(10**9)) / 2 / 22050
    assert seconds > 90
    assert first_at - started < total / 3, (first_at - started, total)
    assert gone.status_code == 404
    assert gone.json() == {"error": "Audio stream not found or expired", "code": "HTTP_404"}
