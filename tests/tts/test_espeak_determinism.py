"""eSpeak NG speaks a text the same way every time, whatever was spoken before it.

libespeak-ng keeps synthesis state between calls (pitch flutter position, glottal cycle
count, gain, breath resonators, noise seed, echo buffer); before the fix the same text came
out up to ~250 bytes different from one request to the next.
"""

from __future__ import annotations

import threading

import pytest

from speech.tts.espeak import EspeakEngine

TEXT = "The quick brown fox jumps over the lazy dog. Then it runs far away into the woods."
# Several pieces (the engine splits at sentences, the first piece at 120 characters), so
# concurrent jobs interleave piece by piece on the synthesis thread.
LONG = " ".join(f"Sentence number {n} is spoken here, with a comma and a pause." for n in range(8))


@pytest.fixture(scope="module")
def engine() -> EspeakEngine:
    return EspeakEngine()


def speak(engine: EspeakEngine, text: str = TEXT, **options) -> bytes:
    return b"".join(chunk.pcm for chunk in engine.synthesize(text, **options))


def test_same_text_five_times_gives_identical_bytes(engine):
    runs = [speak(engine) for _ in range(5)]
    assert len(runs[0]) > 100_000
    assert all(run == runs[0] for run in runs)


def test_what_was_spoken_before_does_not_change_the_next_text(engine):
    reference = speak(engine)
    # Other voices, a variant with breath (whisper) and echo (f3), other parameters and
    # speeds in between: each leaves different state in the library.
    speak(engine, "Something else entirely.", voice="en-us+whisper")
    speak(engine, "Und jetzt auf Deutsch.", voice="de", params={"pitch": 90})
    speak(engine, "Fast and high.", voice="en-us+f3", speed=2.5)
    assert speak(engine) == reference
    assert speak(engine, voice="en-us+f3") == speak(engine, voice="en-us+f3")
    assert speak(engine, voice="en-us+whisper") == speak(engine, voice="en-us+whisper")


def test_concurrent_jobs_each_sound_as_they_do_alone(engine):
    alone = {voice: speak(engine, LONG, voice=voice) for voice in ("en-us", "en-gb", "en-us+f3")}
    results: dict[str, bytes] = {}

    def run(voice: str) -> None:
        results[voice] = speak(engine, LONG, voice=voice)

    threads = [threading.Thread(target=run, args=(voice,)) for voice in alone]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert results == alone
