import re
import threading
import time

import numpy as np
import pytest

from speech.tts import espeak as espeak_module
from speech.tts.base import UnsupportedFeature, VoiceNotFound, VoiceSample, astream
from speech.tts.espeak import EspeakEngine
from speech.tts.registry import OPENAI_VOICE_TO_ESPEAK

SENTENCE = "The quick brown fox jumps over the lazy dog near the quiet river bank. "
LONG_TEXT = (SENTENCE * 15)[:1000]  # about a minute of speech, several 400-character pieces


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def seconds(engine: EspeakEngine, chunks) -> float:
    return sum(len(chunk.pcm) for chunk in chunks) / (2 * engine.sample_rate)


def speak(engine: EspeakEngine, text: str, **kwargs) -> float:
    return seconds(engine, list(engine.synthesize(text, **kwargs)))


def median_pitch_hz(pcm: bytes, sample_rate: int) -> float:
    """Median fundamental frequency of the voiced 40 ms frames, by autocorrelation."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    frame = int(0.04 * sample_rate)
    low_lag, high_lag = sample_rate // 400, sample_rate // 60
    loudness = np.sqrt(np.mean(samples**2))
    pitches = []
    for start in range(0, len(samples) - frame, frame):
        window = samples[start : start + frame]
        window = window - window.mean()
        if np.sqrt(np.mean(window**2)) < 0.5 * loudness:
            continue  # silence or a weak consonant
        correlation = np.correlate(window, window, "full")[frame - 1 :]
        lag = low_lag + int(np.argmax(correlation[low_lag:high_lag]))
        if correlation[lag] > 0.3 * correlation[0]:
            pitches.append(sample_rate / lag)
    assert len(pitches) > 10
    return float(np.median(pitches))


def test_format_and_voice_lists(engine):
    assert (engine.sample_rate, engine.channels, engine.bytes_per_sample) == (22050, 1, 2)
    voice_ids = {voice.id for voice in engine.voices()}
    assert {"en-us", "en", "en-gb-x-rp", "fr", "de"} <= voice_ids
    # voices whose dictionary the wheel lacks would speak silence: not offered
    assert "fo" not in voice_ids
    variants = {variant.id: variant for variant in engine.variants()}
    assert variants["f3"].gender == "female" and variants["m3"].gender == "male"
    assert engine.resolve_voice("en-US") == "en-us"
    assert engine.resolve_voice("en-gb") == "en"  # language code alias
    assert engine.resolve_voice("English (America)+F3") == "en-us+f3"
    assert engine.resolve_voice(None) == "en-us"


def test_long_text_streams_incrementally_with_plausible_duration(engine):
    started = time.perf_counter()
    first_chunk_at = None
    chunks = []
    for chunk in engine.synthesize(LONG_TEXT):
        if first_chunk_at is None:
            first_chunk_at = time.perf_counter() - started
        chunks.append(chunk)
    elapsed = time.perf_counter() - started
    duration = seconds(engine, chunks)
    words = len(LONG_TEXT.split())
    expected = words / 175 * 60  # espeak's default rate is 175 words per minute
    assert 0.7 * expected < duration < 1.4 * expected
    assert len(chunks) > 100  # ~60 ms buffers, handed over as produced
    assert all(len(chunk.pcm) % 2 == 0 for chunk in chunks)
    assert first_chunk_at < 0.25
    assert first_chunk_at < elapsed / 2
    assert elapsed < duration / 20  # far faster than real time


def test_word_and_sentence_marks_point_into_text_and_audio(engine):
    text = "H\u00e9llo w\u00f6rld, this is caf\u00e9 talk. Second sentence here! Third?"
    chunks = list(engine.synthesize(text))
    total = sum(len(chunk.pcm) for chunk in chunks)
    marks = [mark for chunk in chunks for mark in chunk.marks]
    words = [mark for mark in marks if mark.kind == "word"]
    sentences = [mark for mark in marks if mark.kind == "sentence"]
    word_starts = [match.start() for match in re.finditer(r"\w+", text)]
    assert [mark.text_offset for mark in words] == word_starts
    assert [mark.text_offset for mark in sentences] == [
        0,
        text.index("Second"),
        text.index("Third"),
    ]
    audio_offsets = [mark.audio_offset for mark in words]
    assert audio_offsets == sorted(audio_offsets)
    assert all(offset % 2 == 0 and 0 <= offset < total for offset in audio_offsets)
    assert audio_offsets[-1] > total / 2


def test_marks_are_offset_across_pieces(engine):
    text = "Alpha beta gamma. " * 40  # longer than one 400-character piece
    chunks = list(engine.synthesize(text))
    total = sum(len(chunk.pcm) for chunk in chunks)
    words = [mark for chunk in chunks for mark in chunk.marks if mark.kind == "word"]
    assert len(words) == 120
    assert [text[mark.text_offset : mark.text_offset + 5] for mark in words[-3:]] == [
        "Alpha",
        "beta ",
        "gamma",
    ]
    offsets = [mark.audio_offset for mark in words]
    assert offsets == sorted(offsets) and offsets[-1] > 0.9 * total


def test_speed_maps_to_rate_and_clamps(engine):
    normal = speak(engine, LONG_TEXT[:300])
    assert 0.4 < speak(engine, LONG_TEXT[:300], speed=2.0) / normal < 0.6
    assert 0.2 < speak(engine, LONG_TEXT[:300], speed=4.0) / normal < 0.32
    slowest = speak(engine, LONG_TEXT[:300], speed=0.46)
    assert 1.8 < slowest / normal < 2.4
    # espeak cannot go below 80 wpm: slower requests sound like the slowest it can do
    assert speak(engine, LONG_TEXT[:300], speed=0.25) == pytest.approx(slowest, rel=0.05)
    low, high = engine.capabilities.speed_range
    assert low == pytest.approx(80 / 175) and high == 4.0


def test_pitch_param_and_openai_voices_change_the_voice(engine):
    text = "Hello there, this is a short test of the speaking voice."

    def pitch(**kwargs) -> float:
        pcm = b"".join(chunk.pcm for chunk in engine.synthesize(text, **kwargs))
        return median_pitch_hz(pcm, engine.sample_rate)

    assert pitch(params={"pitch": 90}) > 1.3 * pitch(params={"pitch": 10})
    female = pitch(voice=OPENAI_VOICE_TO_ESPEAK["shimmer"])
    deep_male = pitch(voice=OPENAI_VOICE_TO_ESPEAK["onyx"])
    assert female > 1.5 * deep_male
    with pytest.raises(ValueError):
        engine.synthesize(text, params={"pitch": "high"})


def test_cancel_event_stops_within_one_chunk_and_engine_recovers(engine):
    cancel = threading.Event()
    received = 0
    for _chunk in engine.synthesize(LONG_TEXT * 3, cancel=cancel):
        received += 1
        if received == 3:
            cancel.set()
    assert received <= 4
    # the engine is immediately usable again, with full-length output
    assert speak(engine, LONG_TEXT[:300]) == pytest.approx(speak(engine, LONG_TEXT[:300]), 0.05)


def test_breaking_out_of_the_stream_cancels_the_job(monkeypatch):
    engine = EspeakEngine(processes=0)  # the in-process runtime's jobs, observed directly
    jobs = []
    submit = engine._runtime.submit
    monkeypatch.setattr(engine._runtime, "submit", lambda job: (jobs.append(job), submit(job)))
    stream = engine.synthesize(LONG_TEXT * 5)
    next(stream)
    stream.close()
    assert jobs[0].stopped
    time.sleep(0.1)
    assert jobs[0].pieces, "the rest of the text was never synthesized"


def test_a_slow_consumer_parks_the_job_instead_of_buffering_everything(monkeypatch):
    engine = EspeakEngine(processes=0)  # the worker processes' parking: test_espeak_processes
    monkeypatch.setattr(espeak_module, "_MAX_BUFFERED_SECONDS", 2.0)
    jobs = []
    submit = engine._runtime.submit
    monkeypatch.setattr(engine._runtime, "submit", lambda job: (jobs.append(job), submit(job)))
    text = SENTENCE * 60  # ~4 minutes of audio
    stream = engine.synthesize(text)
    chunks = [next(stream)]
    time.sleep(0.3)  # long enough to synthesize everything if nothing held it back
    buffered_seconds = jobs[0].buffered_bytes / (2 * engine.sample_rate)
    assert buffered_seconds < 40  # the 2 s limit plus at most one 400-character piece
    assert jobs[0].pieces
    chunks.extend(stream)  # draining resumes the job to the end
    assert seconds(engine, chunks) == pytest.approx(speak(engine, text), rel=0.05)


def test_eight_concurrent_threads_get_their_own_complete_audio(engine):
    text = LONG_TEXT[:600]
    expected = {1.0: speak(engine, text), 2.0: speak(engine, text, speed=2.0)}
    results: dict[int, float] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            speed = 1.0 if index % 2 else 2.0
            voice = "en-us+f3" if index % 3 else "en-gb-x-rp"
            results[index] = speak(engine, text, speed=speed, voice=voice) / expected[speed]
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert len(results) == 8
    # each caller's speed was honoured: no parameter leaked between interleaved jobs
    assert all(0.85 < ratio < 1.15 for ratio in results.values()), results


async def test_astream_yields_the_same_audio_as_the_blocking_api(engine):
    text = LONG_TEXT[:200]
    expected = speak(engine, text, voice="en-us+m3")
    for _ in range(5):  # the tail once went missing when the engine finished first
        chunks = [chunk async for chunk in astream(engine, text, voice="en-us+m3")]
        assert len(chunks) > 5
        assert seconds(engine, chunks) == pytest.approx(expected, rel=0.002)


def test_finishing_a_stream_leaves_the_callers_cancel_event_alone(engine):
    cancel = threading.Event()
    assert speak(engine, SENTENCE, cancel=cancel) > 2
    assert not cancel.is_set()


def test_bad_requests_fail_before_any_synthesis(engine):
    with pytest.raises(VoiceNotFound):
        engine.synthesize("hi", voice="xx-nope")
    with pytest.raises(VoiceNotFound):
        engine.synthesize("hi", voice="en-us+nope")
    with pytest.raises(UnsupportedFeature):
        engine.synthesize("hi", voice_sample=VoiceSample(b"RIFF"))
    with pytest.raises(ValueError):
        engine.synthesize("hi", speed=0)
    assert list(engine.synthesize("")) == []
    assert list(engine.synthesize("  \n ")) == []


def test_listing_voices_races_with_synthesis_safely(engine):
    """espeak_ListVoices frees the previous list: results must be copied under the lock."""
    errors: list[BaseException] = []

    def list_repeatedly() -> None:
        try:
            for _ in range(30):
                engine._runtime._voices = engine._runtime._variants = None  # force a re-list
                assert len(engine.voices()) > 100 and len(engine.variants()) > 50
        except BaseException as error:
            errors.append(error)

    def speak_repeatedly() -> None:
        try:
            for _ in range(5):
                assert speak(engine, SENTENCE) > 2
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=list_repeatedly) for _ in range(4)]
    threads += [threading.Thread(target=speak_repeatedly) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
