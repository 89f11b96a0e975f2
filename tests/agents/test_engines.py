"""The voice agent's speech engines: Silero VAD, turn detection, Whisper and OpenAI STT.

Speech comes from the project's eSpeak engine, so the VAD and Whisper tests run on real
speech without fixtures on disk. The OpenAI engine talks to a real local HTTP server.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import socket
import threading
import wave
from collections.abc import Iterator
from email import policy
from email.parser import BytesParser
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
import soxr

from agents.engines import stt as stt_module
from agents.engines.stt import (
    MIN_AUDIO_S,
    OpenAISttEngine,
    SttError,
    SttUnavailable,
    Transcript,
    WhisperEngine,
    build_stt,
)
from agents.engines.vad import (
    FRAME_MS,
    FRAME_SAMPLES,
    SAMPLE_RATE,
    SileroModel,
    TurnDetector,
    VadConfig,
    VadConfigError,
    VadEvent,
    VadStream,
)

WEATHER = "What is the weather like in Paris today?"
LIGHTS = "Turn on the kitchen lights"


# -- audio helpers ----------------------------------------------------------------------------


@cache
def espeak_pcm(text: str) -> tuple[bytes, int]:
    """``text`` spoken by eSpeak: PCM16LE mono bytes and their sample rate (22050 Hz)."""
    from speech.tts.registry import build_engine

    engine = build_engine("espeak")
    return b"".join(chunk.pcm for chunk in engine.synthesize(text)), engine.sample_rate


def speech_16k(text: str) -> np.ndarray:
    pcm, rate = espeak_pcm(text)
    samples = np.frombuffer(pcm, dtype="<i2")
    return np.asarray(soxr.resample(samples, rate, SAMPLE_RATE), dtype=np.int16)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.int16)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(expected: str, got: str) -> int:
    """Word-level edit distance (substitutions, insertions, deletions)."""
    a, b = words(expected), words(got)
    row = list(range(len(b) + 1))
    for i, word in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, other in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != other))
    return row[-1]


def events_for(probs: list[float], config: VadConfig | None = None) -> list[VadEvent]:
    detector = TurnDetector(config or VadConfig())
    return [event for prob in probs if (event := detector.push(prob)) is not None]


# -- TurnDetector (pure) ----------------------------------------------------------------------


def test_speech_started_waits_for_min_speech_and_reports_the_onset() -> None:
    detector = TurnDetector(VadConfig(min_speech_ms=96))
    assert [detector.push(0.0) for _ in range(10)] == [None] * 10
    assert detector.push(0.9) is None  # frame 10: a candidate, not confirmed yet
    assert detector.onset_ms == 10 * FRAME_MS
    assert not detector.speaking
    assert detector.push(0.9) is None
    assert detector.speech_ms == 2 * FRAME_MS
    # The third frame makes 96 ms: confirmed, dated from the first speech frame.
    assert detector.push(0.9) == VadEvent("speech_started", 10 * FRAME_MS)
    assert detector.speaking
    assert detector.position_ms == 13 * FRAME_MS


def test_blips_shorter_than_min_speech_are_ignored() -> None:
    blip = [0.0] * 5 + [0.9, 0.9] + [0.0] * 5
    assert events_for(blip * 4) == []
    detector = TurnDetector(VadConfig())
    for prob in [0.9, 0.9, 0.0]:
        detector.push(prob)
    assert detector.onset_ms is None
    assert detector.speech_ms == 0


def test_min_speech_zero_confirms_on_the_first_speech_frame() -> None:
    assert events_for([0.0, 0.8], VadConfig(min_speech_ms=0)) == [
        VadEvent("speech_started", FRAME_MS)
    ]


def test_hysteresis_band_keeps_the_previous_state() -> None:
    # threshold 0.5: >= 0.5 speech, < 0.35 silence, in between: whatever came before.
    assert events_for([0.45] * 50) == []  # from silence, the band stays silence
    probs = [0.9] * 3 + [0.4] * 40  # from speech, the band stays speech: no end of turn
    detector = TurnDetector(VadConfig())
    events = [e for p in probs if (e := detector.push(p)) is not None]
    assert events == [VadEvent("speech_started", 0)]
    assert detector.speaking
    assert detector.silence_ms == 0
    assert detector.speech_ms == 43 * FRAME_MS
    # 0.34 is below the band: silence counts from here.
    detector.push(0.34)
    assert detector.silence_ms == FRAME_MS


def test_hysteresis_floor_for_low_thresholds() -> None:
    # threshold 0.1: silence below max(0.1 - 0.15, 0.01) = 0.01 only.
    config = VadConfig(threshold=0.1, silence_ms=100, min_speech_ms=0)
    assert events_for([0.2] + [0.02] * 10, config) == [VadEvent("speech_started", 0)]
    assert events_for([0.2] + [0.005] * 4, config) == [
        VadEvent("speech_started", 0),
        VadEvent("speech_stopped", FRAME_MS),
    ]


def test_speech_stopped_after_silence_ms_dated_at_the_last_speech_frame() -> None:
    config = VadConfig(silence_ms=600)
    detector = TurnDetector(config)
    probs = [0.0] * 5 + [0.9] * 20 + [0.1] * 40
    events: list[tuple[int, VadEvent]] = []
    for prob in probs:
        event = detector.push(prob)
        if event is not None:
            events.append((detector.position_ms, event))
    assert [event for _, event in events] == [
        VadEvent("speech_started", 5 * FRAME_MS),
        VadEvent("speech_stopped", 25 * FRAME_MS),
    ]
    fired_at, stopped = events[1]
    # Fires on the first frame that completes 600 ms of silence: 19 frames = 608 ms.
    assert fired_at - stopped.offset_ms == 19 * FRAME_MS
    assert not detector.speaking
    assert detector.onset_ms is None
    assert detector.silence_ms == 0


def test_short_pauses_do_not_end_the_turn_and_speech_ms_spans_them() -> None:
    detector = TurnDetector(VadConfig(silence_ms=300))
    probs = [0.9] * 5 + [0.0] * 8 + [0.9] * 5  # 256 ms pause < 300 ms
    assert [e for p in probs if (e := detector.push(p)) is not None] == [
        VadEvent("speech_started", 0)
    ]
    assert detector.speaking
    assert detector.speech_ms == 18 * FRAME_MS


def test_a_new_turn_after_speech_stopped_and_reset() -> None:
    config = VadConfig(silence_ms=100, min_speech_ms=0)
    probs = [0.9] * 2 + [0.0] * 4 + [0.9] * 2
    assert events_for(probs, config) == [
        VadEvent("speech_started", 0),
        VadEvent("speech_stopped", 2 * FRAME_MS),
        VadEvent("speech_started", 6 * FRAME_MS),
    ]
    detector = TurnDetector(config)
    for prob in probs:
        detector.push(prob)
    detector.reset()
    assert (detector.position_ms, detector.speaking, detector.onset_ms) == (0, False, None)


def test_config_can_change_between_frames() -> None:
    detector = TurnDetector(VadConfig(threshold=0.9))
    assert detector.push(0.7) is None
    detector.config = VadConfig(threshold=0.6, min_speech_ms=0)
    assert detector.push(0.7) == VadEvent("speech_started", FRAME_MS)


# -- VadConfig --------------------------------------------------------------------------------


def test_vad_config_from_dict_overrides_the_base_only_where_given() -> None:
    base = VadConfig(silence_ms=800)
    config = VadConfig.from_dict({"threshold": 0.6, "min_speech_ms": 0}, base)
    assert config == VadConfig(threshold=0.6, silence_ms=800, min_speech_ms=0)
    assert base == VadConfig(silence_ms=800)  # untouched
    assert VadConfig.from_dict({}) == VadConfig()
    assert VadConfig.from_dict({"threshold": 1 - 0.5}).threshold == 0.5
    assert isinstance(VadConfig.from_dict({"threshold": 0.5}).threshold, float)


@pytest.mark.parametrize(
    ("data", "field", "reason"),
    [
        ({"threshold": 0.01}, "threshold", "between"),
        ({"threshold": 0.99}, "threshold", "between"),
        ({"threshold": float("nan")}, "threshold", "between"),
        ({"threshold": "0.5"}, "threshold", "number"),
        ({"threshold": True}, "threshold", "number"),
        ({"silence_ms": 99}, "silence_ms", "between"),
        ({"silence_ms": 5001}, "silence_ms", "between"),
        ({"silence_ms": 600.0}, "silence_ms", "integer"),
        ({"min_speech_ms": -1}, "min_speech_ms", "between"),
        ({"min_speech_ms": True}, "min_speech_ms", "integer"),
        ({"prefix_padding_ms": 2001}, "prefix_padding_ms", "between"),
        ({"barge_in_ms": None}, "barge_in_ms", "integer"),
        ({"silence": 600}, "silence", "unknown"),
    ],
)
def test_vad_config_errors_name_the_field(data: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(VadConfigError) as caught:
        VadConfig.from_dict(data)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert isinstance(caught.value, ValueError)
    assert str(caught.value).startswith(f"{field}: ")


def test_vad_config_must_be_an_object() -> None:
    with pytest.raises(VadConfigError) as caught:
        VadConfig.from_dict([("threshold", 0.5)])  # type: ignore[arg-type]
    assert caught.value.field == "vad"


# -- Silero on real audio ---------------------------------------------------------------------


def test_shared_model_is_one_instance_across_threads() -> None:
    seen: list[SileroModel] = []
    threads = [threading.Thread(target=lambda: seen.append(SileroModel.shared())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(model) for model in seen}) == 1
    prob, h, c = seen[0].run(np.zeros(576, np.float32), *SileroModel.initial_state())
    assert 0.0 <= prob < 0.5
    assert h.shape == c.shape == (1, 1, 128)


def test_vad_stream_is_independent_of_chunking() -> None:
    audio = np.concatenate([silence(0.5), speech_16k(LIGHTS), silence(0.3)]).tobytes()
    whole = VadStream()
    at_once = whole.feed(audio)
    assert whole.frames == len(audio) // (FRAME_SAMPLES * 2) == len(at_once)

    pieces = VadStream()
    probs: list[float] = []
    for start in range(0, len(audio), 333):  # odd sizes: half samples wait in the buffer
        probs += pieces.feed(audio[start : start + 333])
    assert np.allclose(probs, at_once, atol=1e-5)
    assert all(0.0 <= p <= 1.0 for p in probs)

    pieces.reset()
    assert pieces.frames == 0
    assert pieces.feed(b"\x00" * 1023) == []
    assert len(pieces.feed(b"\x00")) == 1


def test_vad_finds_real_speech_and_its_end() -> None:
    clip = speech_16k(WEATHER)
    # Where the voice really starts and ends inside eSpeak's clip (above -40 dBFS).
    loud = np.flatnonzero(np.abs(clip.astype(np.int32)) > 328)
    voice_start_ms = 1000 + loud[0] * 1000 // SAMPLE_RATE
    voice_end_ms = 1000 + loud[-1] * 1000 // SAMPLE_RATE
    audio = np.concatenate([silence(1.0), clip, silence(1.5)]).tobytes()

    config = VadConfig()
    stream, detector = VadStream(), TurnDetector(config)
    events: list[tuple[int, VadEvent]] = []
    for start in range(0, len(audio), 3200):  # 100 ms chunks, as a client would send
        for prob in stream.feed(audio[start : start + 3200]):
            if (event := detector.push(prob)) is not None:
                events.append((detector.position_ms, event))

    assert [event.kind for _, event in events] == ["speech_started", "speech_stopped"]
    (started_at, started), (stopped_at, stopped) = events
    assert abs(started.offset_ms - voice_start_ms) <= 150
    assert started_at - started.offset_ms >= config.min_speech_ms
    assert voice_end_ms - 400 <= stopped.offset_ms <= voice_end_ms + 150
    # Announced once silence_ms of silence followed the last speech frame.
    assert config.silence_ms <= stopped_at - stopped.offset_ms < config.silence_ms + FRAME_MS


def test_vad_ignores_white_noise_at_minus_35_dbfs() -> None:
    rng = np.random.default_rng(20261130)
    rms = 32768 * 10 ** (-35 / 20)
    noise = np.clip(rng.normal(0.0, rms, 5 * SAMPLE_RATE), -32768, 32767).astype(np.int16)
    stream = VadStream()
    probs = stream.feed(noise.tobytes())
    assert len(probs) == 5 * SAMPLE_RATE // FRAME_SAMPLES
    assert events_for(probs) == []


# -- Whisper ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def whisper() -> Iterator[WhisperEngine]:
    """One engine (and one model load) for the whole module."""
    engine = WhisperEngine(threads=2)
    asyncio.run(engine.warm())
    yield engine
    engine.close()


@pytest.mark.parametrize("text", [WEATHER, LIGHTS])
async def test_whisper_transcribes_espeak_speech(whisper: WhisperEngine, text: str) -> None:
    pcm = speech_16k(text).tobytes()
    result = await whisper.transcribe(pcm)
    assert word_errors(text, result.text) <= 1, result.text
    assert result.language == "en"
    assert result.duration_s == pytest.approx(len(pcm) / 2 / SAMPLE_RATE)
    assert result.segments == ()
    assert result.text == result.text.strip()
    assert "  " not in result.text


async def test_whisper_resamples_other_rates(whisper: WhisperEngine) -> None:
    pcm, rate = espeak_pcm(LIGHTS)
    assert rate == 22050
    result = await whisper.transcribe(pcm, sample_rate=rate, language="en-US")
    assert word_errors(LIGHTS, result.text) <= 1, result.text
    assert result.duration_s == pytest.approx(len(pcm) / 2 / rate)


async def test_whisper_timestamps_give_segments(whisper: WhisperEngine) -> None:
    pcm = np.concatenate([silence(0.5), speech_16k(WEATHER), silence(0.3)]).tobytes()
    result = await whisper.transcribe(pcm, timestamps=True)
    assert result.segments
    assert " ".join(segment.text for segment in result.segments) == result.text
    for segment in result.segments:
        assert 0.0 <= segment.start_s < segment.end_s <= result.duration_s + 1e-6
    assert word_errors(WEATHER, result.text) <= 1, result.text


async def test_whisper_serializes_concurrent_requests(whisper: WhisperEngine) -> None:
    pcm = speech_16k(LIGHTS).tobytes()
    results = await asyncio.gather(whisper.transcribe(pcm), whisper.transcribe(pcm))
    assert all(word_errors(LIGHTS, result.text) <= 1 for result in results)


async def test_whisper_returns_nothing_for_silence_and_tiny_audio(
    whisper: WhisperEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await whisper.transcribe(b"") == Transcript("", "en", 0.0)
    assert (await whisper.transcribe(silence(2.0).tobytes())).text == ""

    async def must_not_run(*args: Any, **kwargs: Any) -> Transcript:
        raise AssertionError("the model ran on audio shorter than MIN_AUDIO_S")

    monkeypatch.setattr(whisper, "_transcribe", must_not_run)
    short = speech_16k(LIGHTS)[: int(MIN_AUDIO_S * SAMPLE_RATE) - 1].tobytes()
    result = await whisper.transcribe(short)
    assert result.text == ""
    assert result.duration_s < MIN_AUDIO_S


async def test_whisper_english_only_rejects_other_languages(whisper: WhisperEngine) -> None:
    with pytest.raises(SttError) as caught:
        await whisper.transcribe(speech_16k(LIGHTS).tobytes(), language="fr")
    assert caught.value.code == "unsupported_language"
    with pytest.raises(ValueError):
        await whisper.transcribe(b"\x00\x00", sample_rate=0)


def test_whisper_info_and_missing_model(tmp_path: Any) -> None:
    engine = build_stt("whisper")
    assert engine.info() == {
        "name": "whisper",
        "model": "tiny.en",
        "sample_rate": 16000,
        "streaming": False,
    }
    engine.close()
    with pytest.raises(SttUnavailable):
        WhisperEngine(model_path=tmp_path)


# -- OpenAI-compatible server -----------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    server: _StandInServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        parsed = BytesParser(policy=policy.HTTP).parsebytes(
            f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body
        )
        fields: dict[str, Any] = {}
        for part in parsed.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if part.get_filename():
                fields[name] = (part.get_filename(), part.get_content_type(), payload)
            else:
                fields[name] = payload.decode()
        self.server.requests.append(
            {"path": self.path, "headers": dict(self.headers), "fields": fields}
        )
        status, content_type, answer = self.server.reply
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _StandInServer(ThreadingHTTPServer):
    requests: list[dict[str, Any]]
    reply: tuple[int, str, bytes]

    def answer(self, status: int, body: Any, content_type: str = "application/json") -> None:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.reply = (status, content_type, raw)


@pytest.fixture(scope="module")
def stand_in() -> Iterator[_StandInServer]:
    server = _StandInServer(("127.0.0.1", 0), _Handler)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(stand_in: _StandInServer) -> _StandInServer:
    stand_in.requests.clear()
    stand_in.answer(200, {"text": ""})
    return stand_in


def _url(server: _StandInServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/v1"


async def test_openai_posts_multipart_wav_and_reads_json(server: _StandInServer) -> None:
    server.answer(200, {"text": "  turn on   the kitchen lights "})
    engine = OpenAISttEngine(_url(server) + "/", model="whisper-x", api_key="sk-test")
    pcm, rate = espeak_pcm(LIGHTS)
    result = await engine.transcribe(pcm, sample_rate=rate, language="en", prompt="kitchen")
    await engine.aclose()

    assert result == Transcript("turn on the kitchen lights", "en", len(pcm) / 2 / rate)
    [request] = server.requests
    assert request["path"] == "/v1/audio/transcriptions"
    assert request["headers"]["Authorization"] == "Bearer sk-test"
    fields = request["fields"]
    assert {key: fields[key] for key in ("model", "language", "prompt", "response_format")} == {
        "model": "whisper-x",
        "language": "en",
        "prompt": "kitchen",
        "response_format": "json",
    }
    filename, content_type, wav_bytes = fields["file"]
    assert (filename, content_type) == ("audio.wav", "audio/wav")
    with wave.open(io.BytesIO(wav_bytes)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        # Resampled from 22050 Hz: same duration, 16 kHz frames, real sizes in the header.
        assert wav.getnframes() == pytest.approx(len(pcm) / 2 * 16000 / rate, abs=2)
        assert len(wav.readframes(wav.getnframes())) == wav.getnframes() * 2


async def test_openai_timestamps_use_verbose_json(server: _StandInServer) -> None:
    server.answer(
        200,
        {
            "text": "Hello there. General Kenobi.",
            "language": "english",
            "segments": [
                {"id": 0, "start": 0.0, "end": 0.9, "text": " Hello there."},
                {"id": 1, "start": 1.0, "end": 1.8, "text": " General Kenobi."},
            ],
        },
    )
    engine = OpenAISttEngine(_url(server))
    result = await engine.transcribe(speech_16k(WEATHER).tobytes(), timestamps=True)
    await engine.aclose()
    fields = server.requests[0]["fields"]
    assert fields["response_format"] == "verbose_json"
    assert "language" not in fields
    assert "prompt" not in fields
    assert "Authorization" not in server.requests[0]["headers"]
    assert result.language == "english"
    assert [(s.start_s, s.end_s, s.text) for s in result.segments] == [
        (0.0, 0.9, "Hello there."),
        (1.0, 1.8, "General Kenobi."),
    ]


@pytest.mark.parametrize(
    ("status", "body", "content_type", "expect"),
    [
        (500, {"error": {"message": "model overloaded"}}, "application/json", "model overloaded"),
        (401, b"bad key", "text/plain", "HTTP 401: bad key"),
        (200, b"<html>not json</html>", "text/html", "not JSON"),
        (200, {"transcript": "hi"}, "application/json", "without a text"),
    ],
)
async def test_openai_maps_bad_answers_to_stt_failed(
    server: _StandInServer, status: int, body: Any, content_type: str, expect: str
) -> None:
    server.answer(status, body, content_type)
    engine = OpenAISttEngine(_url(server))
    with pytest.raises(SttError) as caught:
        await engine.transcribe(speech_16k(LIGHTS).tobytes())
    await engine.aclose()
    assert caught.value.code == "stt_failed"
    assert expect in caught.value.detail
    assert _url(server) in caught.value.detail


async def test_openai_unreachable_server_is_stt_failed() -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = OpenAISttEngine(f"http://127.0.0.1:{port}/v1", timeout_s=5)
    with pytest.raises(SttError) as caught:
        await engine.transcribe(speech_16k(LIGHTS).tobytes())
    assert caught.value.code == "stt_failed"
    assert "cannot reach" in caught.value.detail


async def test_openai_skips_silence_and_tiny_audio(server: _StandInServer) -> None:
    engine = OpenAISttEngine(_url(server))
    assert (await engine.transcribe(silence(1.0).tobytes())).text == ""
    assert (await engine.transcribe(b"\x01\x02" * 100)).text == ""
    assert server.requests == []
    assert engine.info()["name"] == "openai"
    assert engine.info()["model"] == "whisper-1"


def test_openai_needs_a_base_url_and_build_stt_knows_the_kinds() -> None:
    with pytest.raises(SttUnavailable):
        OpenAISttEngine("")
    with pytest.raises(SttUnavailable):
        build_stt("openai", base_url="  ")
    with pytest.raises(SttUnavailable) as caught:
        build_stt("vosk")
    assert "whisper" in caught.value.detail
    assert "openai" in caught.value.detail
    assert isinstance(build_stt("openai", base_url="http://x/v1"), OpenAISttEngine)


# -- the Django-aware accessor ----------------------------------------------------------------


def test_get_stt_builds_from_settings_and_caches(settings: Any) -> None:
    from agents.stt import STT_ENGINES, clear_stt_cache, get_stt

    assert STT_ENGINES == ("whisper", "openai")
    clear_stt_cache()
    settings.PARLEY_STT_ENGINE = "whisper"
    engine = get_stt()
    assert isinstance(engine, WhisperEngine)
    assert get_stt("whisper") is engine
    assert engine.threads == settings.PARLEY_STT_THREADS

    settings.PARLEY_STT_URL = ""
    with pytest.raises(SttUnavailable):
        get_stt("openai")
    settings.PARLEY_STT_URL = "http://stt.example:9000/v1"
    settings.PARLEY_STT_MODEL = "large-v3"
    remote = get_stt("openai")
    assert isinstance(remote, OpenAISttEngine)
    assert (remote.url, remote.model) == (
        "http://stt.example:9000/v1/audio/transcriptions",
        "large-v3",
    )
    assert get_stt("openai") is remote
    settings.PARLEY_STT_MODEL = "whisper-1"
    assert get_stt("openai") is not remote  # changed settings build a new engine
    clear_stt_cache()


def test_engines_package_imports_no_django() -> None:
    import ast
    from pathlib import Path

    package = Path(stt_module.__file__).parent
    for source in package.glob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            names = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            assert not any(name.split(".")[0] == "django" for name in names), source
