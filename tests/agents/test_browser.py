"""The agent page in a real Chromium, against a real daphne: speak through a fake microphone
(an eSpeak WAV), hear the agent answer, talk over it and see the reply cut.

Chromium captures the WAV as its microphone (`--use-file-for-fake-audio-capture`, played once
with `%noloop`); the page streams it to `/ws/agent` like any microphone, so the whole path runs:
the AudioWorklet's downsampling, server VAD, Whisper, the built-in responder, eSpeak, and the
page's Web Audio playback and flush on `agent.interrupt`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr

from tests.support.browser import ensure_chromium, launch, screenshot_on_failure
from tests.support.servers import PROJECT_ROOT, DaphneProcess

pytestmark = pytest.mark.timeout(120)

MIC_RATE = 48000  # what a real microphone delivers; the page downsamples to 16 kHz
NUMBER_WORDS = {
    0: "zero",
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[DaphneProcess]:
    var_dir: Path = tmp_path_factory.mktemp("var")
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PARLEY_VAR_DIR": str(var_dir),
        "DATABASE_URL": None,  # the embedded default: a throwaway SQLite under var_dir
        "REDIS_URL": None,
        "PARLEY_REQUIRE_AUTH": None,
        "PARLEY_RESPONDER": "builtin",
        "PARLEY_AGENT_RESPONDER": "builtin",
        "PARLEY_TTS_ENGINE": "espeak",
        "PARLEY_STT_ENGINE": "whisper",
    }
    migrate_env = {k: v for k, v in os.environ.items() if k not in env}
    migrate_env.update({k: v for k, v in env.items() if v is not None})
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env=migrate_env,
        check=True,
    )
    process = DaphneProcess(env=env, startup_timeout=60)
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ensure_chromium()  # installs Debian's chromium if needed, before any timer runs
    with sync_playwright() as p:
        yield p


# --- the fake microphone --------------------------------------------------------------------


def speech(text: str) -> np.ndarray:
    """eSpeak saying `text`, as float samples at MIC_RATE."""
    from speech.tts.registry import build_engine

    engine = build_engine("espeak")
    pcm = b"".join(chunk.pcm for chunk in engine.synthesize(text))
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    return soxr.resample(samples, engine.sample_rate, MIC_RATE)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * MIC_RATE), dtype=np.float32)


def write_wav(path: Path, *parts: np.ndarray) -> Path:
    samples = np.concatenate(parts)
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(MIC_RATE)
        wav.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return path


# --- helpers ----------------------------------------------------------------------------------


def normalize(text: str) -> str:
    """Lower case, digits spelled out, punctuation gone: "What is 2 + 2?" -> "what is two plus
    two"."""
    text = text.lower().replace("+", " plus ")
    text = re.sub(r"\d+", lambda m: NUMBER_WORDS.get(int(m.group()), m.group()), text)
    return " ".join(re.sub(r"[^a-z0-9 ]+", " ", text).split())


def state(page) -> dict[str, Any]:
    return page.evaluate(
        """() => ({
            state: window.parley.state,
            mic: window.parley.mic,
            events: window.parley.events,
            transcripts: window.parley.transcripts,
            playedChunks: window.parley.playedChunks,
            playback: window.parley.playback,
            interrupted: window.parley.interrupted,
            metrics: window.parley.metrics,
            errors: window.parley.errors,
            micChunks: window.parley.micChunks,
        })"""
    )


def wait_for(page, what: str, check: Callable[[dict[str, Any]], Any], timeout: float) -> Any:
    """Poll window.parley until `check` returns something truthy; fail saying what is missing."""
    deadline = time.monotonic() + timeout
    while True:
        snapshot = state(page)
        found = check(snapshot)
        if found:
            return found
        if time.monotonic() > deadline:
            events = [  # the story so far, without the audio and text deltas
                {k: v for k, v in e.items() if k in ("type", "utteranceId", "text", "received_at")}
                for e in snapshot["events"]
                if e.get("type") not in ("agent.audio.chunk", "agent.text.delta")
            ]
            summary = {
                "state": snapshot["state"],
                "mic": snapshot["mic"],
                "micChunks": snapshot["micChunks"],
                "playedChunks": snapshot["playedChunks"],
                "events": events[-40:],
                "transcripts": [
                    (t["role"], t["utteranceId"], t["final"], t["text"])
                    for t in snapshot["transcripts"]
                ],
                "errors": snapshot["errors"],
            }
            pytest.fail(f"timed out after {timeout} s waiting for {what}: {summary}")
        page.wait_for_timeout(200)


def final_user_text(containing: str) -> Callable[[dict[str, Any]], Any]:
    def check(snapshot: dict[str, Any]) -> Any:
        for entry in snapshot["transcripts"]:
            if (
                entry["role"] == "user"
                and entry["final"]
                and containing in normalize(entry["text"])
            ):
                return entry
        return None

    return check


def open_agent_page(page, server: DaphneProcess, path: str = "/agent/") -> None:
    page.on("console", lambda msg: print(f"console.{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: print(f"page error: {err}"))
    page.goto(f"{server.url}{path}")
    page.click("#agent-start")
    wait_for(page, "the socket and microphone", lambda s: s["state"] == "connected", 15)
    wait_for(page, "microphone audio going out", lambda s: s["micChunks"] > 10, 15)


# --- tests ------------------------------------------------------------------------------------


def test_spoken_question_gets_a_spoken_answer(server, playwright, tmp_path):
    wav = write_wav(
        tmp_path / "question.wav", silence(1.5), speech("what is two plus two"), silence(3.0)
    )
    browser = launch(playwright, fake_audio_wav=f"{wav}%noloop")
    try:
        page = browser.new_page()
        with screenshot_on_failure(page, tmp_path, "spoken-question"):
            open_agent_page(page, server)
            user = wait_for(page, "the final transcript", final_user_text("two plus two"), 30)

            def answered(snapshot: dict[str, Any]) -> Any:
                for entry in snapshot["transcripts"]:
                    if entry["role"] == "agent" and re.search(r"\b(4|four)\b", entry["text"]):
                        return entry
                return None

            reply = wait_for(page, "the agent's answer", answered, 20)
            assert "two plus two" in normalize(reply["text"]), reply
            wait_for(page, "agent audio played", lambda s: s["playedChunks"] > 0, 20)

            # What the page shows, not only what it keeps.
            shown = page.inner_text("#agent-transcript")
            assert "two plus two" in normalize(shown), shown
            assert re.search(r"\b(4|four)\b", normalize(shown)), shown
            assert page.inner_text("#agent-session") not in ("", "—")
            room = page.get_attribute("#agent-room-link", "href")
            assert room and room.startswith("/rooms/"), room

            # Per-turn latency arrives and is shown.
            snapshot = wait_for(page, "turn.metrics", lambda s: s["metrics"] and s, 20)
            assert any(m.get("reply_latency_ms") is not None for m in snapshot["metrics"])
            assert "reply in" in page.inner_text("#agent-transcript")
            assert user["utteranceId"]
            assert not snapshot["errors"], snapshot["errors"]
    finally:
        browser.close()


def test_talking_over_the_agent_cuts_its_reply(server, playwright, tmp_path):
    question = (
        "repeat the northern railway ran from the harbour through seven market towns, "
        "crossing three rivers and two mountain passes, before it finally reached the old "
        "capital in the far north"
    )
    wav = write_wav(
        tmp_path / "barge-in.wav",
        silence(1.5),
        speech(question),
        silence(3.0),  # the agent starts answering in here
        speech("no wait, stop, stop, I have another question for you"),
        silence(3.0),
    )
    browser = launch(playwright, fake_audio_wav=f"{wav}%noloop")
    try:
        page = browser.new_page()
        with screenshot_on_failure(page, tmp_path, "barge-in"):
            open_agent_page(page, server, "/rooms/browser-barge-in/agent/")
            wait_for(page, "the question's transcript", final_user_text("northern railway"), 40)
            snapshot = wait_for(
                page, "an agent.interrupt frame", lambda s: s["interrupted"] and s, 40
            )
            cut = snapshot["interrupted"][0]
            reply_id = cut["utteranceId"]
            assert reply_id, cut
            frames = [e for e in snapshot["events"] if e["type"] == "agent.interrupt"]
            assert frames and frames[0]["utteranceId"] == reply_id, frames
            page.wait_for_timeout(1500)  # late chunks of the cut reply, if any, arrive now
            snapshot = state(page)

            chunks = [c for c in snapshot["playback"] if c["utteranceId"] == reply_id]
            assert chunks, "the interrupted reply sent no audio"
            assert any(c["startedAt"] is not None for c in chunks), chunks  # it was heard
            late = [c for c in chunks if c["startedAt"] is not None and c["startedAt"] > cut["at"]]
            assert not late, f"chunks played after the interrupt: {late}"
            assert not [c for c in chunks if c["state"] in ("scheduled", "playing")], chunks

            # The cut mark: heard text, the mark, the unheard rest struck through.
            turn = page.locator(f'.agent-turn-agent[data-utterance-id="{reply_id}"]')
            assert turn.locator(".agent-cut").is_visible()
            assert turn.locator(".agent-unheard").count() == 1
            assert "interrupted at" in turn.inner_text()
            reply = next(
                t
                for t in snapshot["transcripts"]
                if t["role"] == "agent" and t["utteranceId"] == reply_id
            )
            assert reply["interrupted"] and "northern railway" in normalize(reply["text"])
            heard = cut["heard_text"] or ""
            assert normalize(reply["text"]).startswith(normalize(heard)), (heard, reply["text"])
            assert len(normalize(heard)) < len(normalize(reply["text"]))
    finally:
        browser.close()


def test_mic_worklet_downsamples_to_16khz_with_a_low_pass(server, playwright, tmp_path):
    """mic-worklet.js in the browser, fed tones through an OfflineAudioContext at 44.1 and
    48 kHz: 16,000 samples a second in 320-sample chunks; 1 kHz passes, 12 kHz (which naive
    decimation would fold back to 4 kHz) is gone."""
    browser = launch(playwright)
    try:
        page = browser.new_page()
        with screenshot_on_failure(page, tmp_path, "worklet"):
            page.goto(f"{server.url}/agent/")
            url = page.get_attribute("#agent", "data-worklet-url")
            results = page.evaluate(
                """async (url) => {
                    const out = {};
                    for (const rate of [44100, 48000]) {
                        for (const freq of [1000, 12000]) {
                            const ctx = new OfflineAudioContext(1, rate * 2, rate);
                            await ctx.audioWorklet.addModule(url);
                            const osc = new OscillatorNode(ctx, {frequency: freq});
                            const gain = new GainNode(ctx, {gain: 0.5});
                            const node = new AudioWorkletNode(ctx, "parley-mic-downsampler");
                            const chunks = [];
                            node.port.onmessage = (e) => chunks.push(new Int16Array(e.data.pcm));
                            osc.connect(gain).connect(node).connect(ctx.destination);
                            osc.start();
                            await ctx.startRendering();
                            await new Promise((r) => setTimeout(r, 300));  // drain messages
                            const samples = chunks.flatMap((c) => Array.from(c)).slice(1600);
                            const rms = Math.sqrt(
                                samples.reduce((a, v) => a + (v / 32768) ** 2, 0) / samples.length
                            );
                            out[`${rate}/${freq}`] = {
                                chunks: chunks.length,
                                sizes: [...new Set(chunks.map((c) => c.length))],
                                gain_db: 20 * Math.log10(rms / (0.5 / Math.SQRT2)),
                            };
                        }
                    }
                    return out;
                }""",
                url,
            )
    finally:
        browser.close()
    for rate in (44100, 48000):
        passed, stopped = results[f"{rate}/1000"], results[f"{rate}/12000"]
        assert passed["sizes"] == [320], results
        assert 95 <= passed["chunks"] <= 100, results  # 2 s = 100 chunks, less the filter delay
        assert abs(passed["gain_db"]) < 0.5, results
        assert stopped["gain_db"] < -40, results
