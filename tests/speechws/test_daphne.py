"""WS /v1/audio/speech/ws against a real daphne with the `websockets` package, as a client
would use it: the first sentence is heard while tokens still arrive, and hostile or vanishing
clients leave no traceback in the server's log."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import websockets

pytestmark = pytest.mark.timeout(180)

LOG_FAILURES = ("Traceback", "Exception inside application")
TEXT = "Hello from a language model. It writes slowly, one token at a time, until done."
TOKENS = TEXT.split()


async def stream_tokens(url: str, delay: float) -> dict:
    """Send tokens `delay` apart while reading; returns when things happened."""
    seen: dict = {"first_audio_at": None, "last_token_at": None, "binary": 0}
    async with websockets.connect(url, max_size=2**22) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"

        async def send() -> None:
            for index, token in enumerate(TOKENS):
                await ws.send(
                    json.dumps({"type": "input_text.append", "text": " " * bool(index) + token})
                )
                await asyncio.sleep(delay)
            seen["last_token_at"] = time.monotonic()
            await ws.send(json.dumps({"type": "end"}))

        sender = asyncio.create_task(send())
        async for message in ws:
            if isinstance(message, bytes):
                seen["binary"] += len(message)
                continue
            event = json.loads(message)
            if event["type"] == "audio" and seen["first_audio_at"] is None:
                seen["first_audio_at"] = time.monotonic()
                seen["first_sentence"] = event["sentence"]
            if event["type"] == "session.done":
                seen["done"] = event
        seen["close_code"] = ws.close_code
        await sender
    return seen


def test_first_sentence_heard_before_the_last_token_over_a_real_socket(daphne):
    start = len(daphne.log())
    seen = asyncio.run(stream_tokens(f"{daphne.ws_url}/v1/audio/speech/ws?voice=nova", 0.3))
    assert seen["first_audio_at"] is not None
    assert seen["first_sentence"] == 1
    assert seen["first_audio_at"] < seen["last_token_at"]
    assert seen["close_code"] == 1000
    assert seen["binary"] == seen["done"]["usage"]["audio_bytes"] > 0
    assert seen["done"]["usage"]["sentences"] == 2
    log = daphne.log()[start:]
    for failure in LOG_FAILURES:
        assert failure not in log, log[-3000:]


def test_hostile_and_vanishing_clients_leave_no_traceback(daphne):
    start = len(daphne.log())
    url = f"{daphne.ws_url}/v1/audio/speech/ws"

    async def scenario() -> None:
        # Garbage of every kind, then a sentence: answered, spoken.
        async with websockets.connect(url) as ws:
            await ws.recv()
            for raw in ["{", "[]", '{"type": null}', '{"type": "x"}', "\x00", "9" * 50_000]:
                await ws.send(raw)
                assert json.loads(await ws.recv())["type"] == "error"
            await ws.send(b"\xff" * 1000)
            assert json.loads(await ws.recv())["code"] == "binary_not_accepted"
            await ws.send(json.dumps({"type": "input_text.append", "text": "Fine.", "flush": True}))
            kinds = []
            while "input_text.flushed" not in kinds:
                message = await ws.recv()
                if isinstance(message, str):
                    kinds.append(json.loads(message)["type"])
            assert "sentence.done" in kinds
        # Leaving in the middle of a long sentence's audio, several times over.
        long = "A long sentence that keeps the engine and the socket busy for a while. " * 8
        for _ in range(4):
            ws = await websockets.connect(url)
            await ws.recv()
            await ws.send(json.dumps({"type": "input_text.append", "text": long, "flush": True}))
            while not isinstance(await ws.recv(), bytes):
                pass
            ws.transport.abort()  # no close frame: a dropped connection
        # Over daphne's own 1 MiB frame limit: daphne closes with 1009, no traceback.
        async with websockets.connect(url, max_size=None) as ws:
            await ws.recv()
            with pytest.raises(websockets.ConnectionClosed):
                await ws.send("x" * (1024 * 1024 + 10))
                await ws.recv()

    asyncio.run(scenario())
    time.sleep(1.5)  # daphne logs an application's exception once its consumer ends
    log = daphne.log()[start:]
    for failure in LOG_FAILURES:
        assert failure not in log, log[-3000:]


def test_the_documented_client_runs_as_written(daphne, tmp_path):
    """docs/speech.md's "A client without an SDK", run against the server: it writes a WAV of
    the session's audio and prints the word timings."""
    import re
    import subprocess
    import sys
    import wave

    from tests.support.servers import PROJECT_ROOT

    docs = (PROJECT_ROOT / "docs" / "speech.md").read_text()
    section = docs.split("### A client without an SDK", 1)[1]
    code = re.search(r"```python\n(.*?)\n```", section, re.S).group(1)
    code = code.replace("ws://localhost:8000", daphne.ws_url)
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    printed = [line.split("ms", 1)[1].strip() for line in done.stdout.splitlines()]
    assert printed == ["Hello", "there.", "How", "are", "you", "today?"]
    with wave.open(str(tmp_path / "out.wav")) as wav:
        assert wav.getframerate() == 24000
        assert wav.getnframes() > 24000  # over a second of speech
