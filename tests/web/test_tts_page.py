"""The /tts/ page in a real Chromium against a real server (`python -m config.server`, this
leg's database): a long text starts playing before its synthesis ends, the progress bar follows
the job's WebSocket to 100 %, and the download is the audio that was played.

The page asks for SSE with raw PCM and schedules every `speech.audio.delta` through Web Audio at
the rate `speech.audio.info` announced; it exposes what it did on `window.parleyTts`
(performance.now() milliseconds; `scheduled` in AudioContext seconds).
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.request import urlopen

import pytest

from tests.support.browser import ensure_chromium, launch, screenshot_on_failure
from tests.support.parley_server import FuzzServer, running_server

pytestmark = pytest.mark.timeout(180)

# ~3,000 characters in 60 sentences: eSpeak needs a second or more for it even on an idle
# machine, while its first piece is out in tens of milliseconds.
LONG_TEXT = " ".join(
    f"Sentence {n} of the playground test, spoken while the rest is still being made."
    for n in range(1, 61)
)


@pytest.fixture(scope="module")
def tts_server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False, extra_env={"PARLEY_TTS_ENGINE": "espeak"}) as server:
        yield server


@pytest.fixture(scope="module")
def tts_browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ensure_chromium()  # installs Debian's chromium if needed, before any timer runs
    with sync_playwright() as p:
        browser = launch(p)
        try:
            yield browser
        finally:
            browser.close()


def tts_state(page: Any) -> dict[str, Any]:
    return page.evaluate("() => ({...window.parleyTts, audioClock: window.parleyTts.audioClock()})")


def wait_until(page: Any, what: str, check: Any, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        state = tts_state(page)
        if check(state):
            return state
        if time.monotonic() > deadline:
            brief = {k: v for k, v in state.items() if k not in ("scheduled", "progressEvents")}
            brief["progressEvents"] = state["progressEvents"][-5:]
            pytest.fail(f"timed out after {timeout} s waiting for {what}: {brief}")
        page.wait_for_timeout(100)


def test_tts_page_plays_while_synthesizing_and_progress_reaches_100(
    tts_server: FuzzServer, tts_browser: Any, tmp_path
):
    page = tts_browser.new_page()
    page.on("console", lambda msg: print(f"console.{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: print(f"page error: {err}"))
    with screenshot_on_failure(page, tmp_path, "tts"):
        page.goto(f"{tts_server.url}/tts/")
        # The voice list comes from GET /v1/voices: the OpenAI names are in it.
        page.wait_for_selector("#tts-voice option[value='alloy']", state="attached", timeout=30000)
        page.select_option("#tts-voice", "alloy")
        page.fill("#tts-input", LONG_TEXT)
        page.click("summary")
        page.fill("#tts-chunk-size", "120")  # more pieces: more progress updates
        page.click("#tts-speak")

        state = wait_until(
            page,
            "the end of synthesis and 100 % progress",
            lambda s: s["error"] or (s["synthesisDoneAt"] and s["progressStatus"] == "completed"),
            timeout=90,
        )
        assert state["error"] is None, state["error"]
        info = state["info"]
        assert info["response_format"] == "pcm" and info["channels"] == 1

        # Audio was handed to Web Audio, and set to start, before the stream's
        # speech.audio.done: it played while the rest was synthesized.
        assert state["firstAudioAt"] is not None
        assert state["firstAudioAt"] < state["synthesisDoneAt"]
        assert state["playStartedAt"] < state["synthesisDoneAt"], state
        assert state["requestAt"] < state["firstAudioAt"]

        # Every delta was scheduled back to back at the announced rate: the durations add up
        # to the bytes received, and no chunk starts before the previous one ends.
        scheduled = state["scheduled"]
        assert len(scheduled) == state["deltas"] > 1
        total = sum(s["duration"] for s in scheduled)
        assert total == pytest.approx(state["bytes"] / (2 * info["sample_rate"]), abs=1e-3)
        for before, after in itertools.pairwise(scheduled):
            assert after["start"] >= before["start"] + before["duration"] - 1e-6

        # The progress bar followed the job's WebSocket to the end.
        assert state["progress"] == 100
        assert state["progressSource"] == "ws"
        assert page.locator("#tts-progress").evaluate("el => el.value") == 100
        assert page.locator("#tts-progress-text").inner_text() == "100 %"
        assert page.locator("#tts-ttfa").inner_text().endswith(" ms")

        # The audio clock runs: playback is under way, not merely scheduled.
        first = scheduled[0]["start"]
        wait_until(
            page,
            "the playback clock to pass the first chunk",
            lambda s: (s["audioClock"] or 0) > first + 0.3,
            timeout=15,
        )

        # The server's record of the job agrees with what the page received.
        with urlopen(f"{tts_server.url}/v1/status/progress/{state['jobId']}", timeout=10) as r:
            job = json.load(r)
        assert job["status"] == "completed"
        assert job["audio_bytes"] == state["bytes"]

        # The download is a WAV of exactly those bytes.
        link = page.locator("#tts-download")
        assert link.is_visible()
        assert link.get_attribute("download") == "speech.wav"
        header = page.evaluate(
            """async () => {
                const blob = await (await fetch(window.parleyTts.downloadUrl)).blob();
                const v = new DataView(await blob.slice(0, 44).arrayBuffer());
                const tag = (o) => String.fromCharCode(...new Uint8Array(v.buffer, o, 4));
                return {size: blob.size, riff: tag(0), wave: tag(8),
                        rate: v.getUint32(24, true), data: v.getUint32(40, true)};
            }"""
        )
        assert header == {
            "size": 44 + state["bytes"],
            "riff": "RIFF",
            "wave": "WAVE",
            "rate": info["sample_rate"],
            "data": state["bytes"],
        }
    page.close()
