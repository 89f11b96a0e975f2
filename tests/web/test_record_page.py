"""The /record/ page in a real Chromium against a real server (`python -m config.server`, this
leg's database): a fake microphone (a 440 Hz tone, `--use-file-for-fake-audio-capture`) is
recorded for about two seconds through the official Socket.IO client into /streaming, and the
WAV the server saved is as long as the page says it recorded, holds the tone, and plays in the
page's <audio> element.

The page exposes what it did on `window.parleyRecord` (performance.now() milliseconds).
"""

from __future__ import annotations

import io
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import urlopen

import numpy as np
import pytest

from tests.support.browser import ensure_chromium, launch, screenshot_on_failure
from tests.support.parley_server import FuzzServer, running_server

pytestmark = pytest.mark.timeout(180)

MIC_RATE = 48000
TONE_HZ = 440.0
RECORD_FOR_S = 2.0


@pytest.fixture(scope="module")
def record_server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False) as server:
        yield server


@pytest.fixture(scope="module")
def tone_wav(tmp_path_factory) -> Path:
    """Ten seconds of a 440 Hz tone at half scale (-9 dBFS RMS): longer than the recording, so
    the microphone never loops or falls silent while the page records."""
    path = tmp_path_factory.mktemp("mic") / "tone.wav"
    t = np.arange(int(10 * MIC_RATE)) / MIC_RATE
    samples = (0.5 * np.sin(2 * np.pi * TONE_HZ * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(MIC_RATE)
        wav.writeframes(samples.tobytes())
    return path


@pytest.fixture(scope="module")
def record_browser(tone_wav: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ensure_chromium()  # installs Debian's chromium if needed, before any timer runs
    with sync_playwright() as p:
        browser = launch(p, fake_audio_wav=tone_wav)
        try:
            yield browser
        finally:
            browser.close()


def record_state(page: Any) -> dict[str, Any]:
    return page.evaluate("() => ({...window.parleyRecord})")


def wait_until(page: Any, what: str, check: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = record_state(page)
        if state["errors"] or check(state):
            assert not state["errors"], f"the page reported errors: {state['errors']}"
            return state
        if time.monotonic() > deadline:
            brief = {k: v for k, v in state.items() if k != "events"}
            brief["events"] = [e["event"] for e in state["events"][-10:]]
            pytest.fail(f"timed out after {timeout} s waiting for {what}: {brief}")
        page.wait_for_timeout(100)


def dominant_hz(samples: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def test_recorder_saves_a_wav_as_long_as_it_recorded(
    record_server: FuzzServer, record_browser: Any, tmp_path
):
    page = record_browser.new_page()
    page.on("console", lambda msg: print(f"console.{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: print(f"page error: {err}"))
    with screenshot_on_failure(page, tmp_path, "record"):
        page.goto(f"{record_server.url}/record/")
        page.click("#record-start")
        wait_until(
            page,
            "microphone audio going out",
            lambda s: s["state"] == "recording" and s["chunksSent"] > 2,
            30,
        )
        page.wait_for_timeout(int(RECORD_FOR_S * 1000))
        during = record_state(page)
        page.click("#record-stop")
        state = wait_until(
            page, "the saved file", lambda s: s["fileUrl"] and s["state"] == "idle", 30
        )

        # The level meter showed the tone (-9 dBFS RMS) while recording.
        assert -15 < during["level"]["db"] < -3, during["level"]
        assert during["state"] == "recording"

        sid = state["streamingId"]
        assert sid and state["fileUrl"].endswith(f"/static/audio/{sid}.wav")
        assert state["chunksAcked"] == state["chunksSent"]  # every chunk stored and answered

        with urlopen(state["fileUrl"], timeout=10) as response:
            assert response.headers["Content-Type"] == "audio/wav"
            data = response.read()
        with wave.open(io.BytesIO(data)) as wav:
            rate, channels, width = wav.getframerate(), wav.getnchannels(), wav.getsampwidth()
            frames = wav.readframes(wav.getnframes())
        assert (rate, channels, width) == (state["sampleRate"], 1, 2) == (16000, 1, 2)
        assert len(frames) == state["bytesSent"]  # exactly what the page sent
        duration = len(frames) / (rate * channels * width)

        # As long as the page recorded, by the wall clock (the fake device runs in real time;
        # generous: the machine is loaded).
        wall = state["wallSeconds"]
        assert RECORD_FOR_S * 0.8 < wall < RECORD_FOR_S + 10
        assert duration == pytest.approx(wall, abs=0.3 + 0.1 * wall)

        # The microphone's tone, not silence: the mic's 440 Hz survived the downsampling.
        samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768
        assert float(np.sqrt(np.mean(samples[rate // 4 :] ** 2))) > 0.2
        assert dominant_hz(samples, rate) == pytest.approx(TONE_HZ, abs=5)

        # The page plays the file from its URL, and offers it for download.
        page.wait_for_function(
            "document.getElementById('record-audio').readyState >= 1", timeout=15000
        )
        player = page.evaluate(
            """() => {
                const a = document.getElementById('record-audio');
                return {src: a.currentSrc, duration: a.duration, error: a.error && a.error.code};
            }"""
        )
        assert player["error"] is None
        assert player["src"].endswith(f"/static/audio/{sid}.wav")
        assert player["duration"] == pytest.approx(duration, abs=0.05)
        download = page.locator("#record-download")
        assert download.is_visible()
        assert download.get_attribute("href") == f"/static/audio/{sid}.wav"
        assert download.get_attribute("download") == f"{sid}.wav"
    page.close()
