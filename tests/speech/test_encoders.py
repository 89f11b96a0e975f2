"""The compressed formats through both encoders (speech.encoding): PyAV in-process (the
default) and one ffmpeg process per response (PARLEY_SPEECH_ENCODER=ffmpeg).

Every format decodes to the duration that went in, the two encoders make the same kind of
stream (muxer, codec, rate, channels), four at once each come out whole, and a response
abandoned midway releases its encoder."""

from __future__ import annotations

import asyncio
import glob
import io
import json
import os
import tempfile
import threading
import urllib.request
from collections.abc import AsyncIterator, Iterator

import av
import numpy as np
import pytest
import soundfile

from speech import encoding
from tests.speech.audio import decoded_seconds, expected_seconds_range
from tests.support.servers import DaphneProcess

BACKENDS = ("pyav", "ffmpeg")
FORMATS = ("mp3", "opus", "aac", "flac")
RATE = 24000
CHUNK = 1440 * 2  # 60 ms, as eSpeak hands them over


def tone(seconds: float, hz: float = 440.0) -> bytes:
    t = np.arange(int(seconds * RATE)) / RATE
    return (np.sin(2 * np.pi * hz * t) * 8000).astype("<i2").tobytes()


async def chunks(pcm: bytes, size: int = CHUNK) -> AsyncIterator[bytes]:
    for start in range(0, len(pcm), size):
        yield pcm[start : start + size]
        await asyncio.sleep(0)


async def encoded(pcm: bytes, fmt: str, backend: str, quality: str = "balanced") -> bytes:
    encoder = await encoding.spawn(fmt, RATE, quality, backend=backend)
    return b"".join([data async for data in encoding.encode(chunks(pcm), encoder, fmt)])


def probe(data: bytes) -> tuple[str, str, int, int]:
    """(container, codec, rate, channels) as libav reads them."""
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        return (
            container.format.name,
            stream.codec_context.name,
            stream.codec_context.sample_rate,
            stream.codec_context.channels,
        )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_the_duration_that_went_in(fmt, backend):
    data = asyncio.run(encoded(tone(1.5), fmt, backend))
    # Codec priming and padding add at most a frame or two (opus/aac/mp3: < 0.1 s).
    assert 1.45 <= decoded_seconds(data, fmt) <= 1.6
    if fmt == "flac":  # the header is complete: libsndfile reads the exact length
        assert soundfile.info(io.BytesIO(data)).frames == int(1.5 * RATE)


@pytest.mark.parametrize("fmt", FORMATS)
def test_both_encoders_make_the_same_kind_of_stream(fmt):
    pcm = tone(1.0)
    made = {backend: asyncio.run(encoded(pcm, fmt, backend, "fast")) for backend in BACKENDS}
    assert probe(made["pyav"]) == probe(made["ffmpeg"])
    assert probe(made["pyav"])[3] == 1
    # Same bitrate / compression level: sizes within a few percent (container metadata
    # such as the encoder's version tag may differ by some bytes).
    assert abs(len(made["pyav"]) - len(made["ffmpeg"])) <= 0.05 * len(made["ffmpeg"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_four_encoders_at_once_each_come_out_whole(backend):
    seconds = (0.6, 1.2, 1.8, 2.4)

    async def scenario() -> list[bytes]:
        return await asyncio.gather(
            *(encoded(tone(s, 300 + 100 * i), "mp3", backend) for i, s in enumerate(seconds))
        )

    for data, wanted in zip(asyncio.run(scenario()), seconds, strict=True):
        assert wanted - 0.05 <= decoded_seconds(data, "mp3") <= wanted + 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_response_abandoned_midway_releases_its_encoder(backend):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "parley-*")))
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield tone(0.06)
            await asyncio.sleep(0)

    async def scenario() -> encoding.Encoder:
        encoder = await encoding.spawn("opus", RATE, "balanced", backend=backend)
        body = encoding.encode(endless(), encoder, "opus")
        async for _ in body:
            if pulled > 20:
                break
        await body.aclose()
        await asyncio.sleep(0.1)  # a chunk still in libav's thread closes the encoder after
        return encoder

    encoder = asyncio.run(scenario())
    count = pulled
    if isinstance(encoder, encoding.AVEncoder):
        assert encoder._closed
    else:
        assert encoder.returncode is not None  # ffmpeg killed and reaped
    assert pulled == count  # the engine's stream was closed too
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "parley-*"))) <= before


def test_the_setting_picks_the_encoder(monkeypatch):
    monkeypatch.delenv(encoding.ENCODER_SETTING, raising=False)
    assert encoding.encoder_name() == "pyav"
    monkeypatch.setenv(encoding.ENCODER_SETTING, "ffmpeg")
    assert encoding.encoder_name() == "ffmpeg"
    monkeypatch.setenv(encoding.ENCODER_SETTING, "PyAV")
    assert encoding.encoder_name() == "pyav"


# --- over HTTP, on a daphne per encoder -------------------------------------------------------


@pytest.fixture(scope="module", params=BACKENDS)
def server(request, tmp_path_factory) -> Iterator[DaphneProcess]:
    import subprocess
    import sys

    from tests.support.servers import PROJECT_ROOT

    var_dir = tmp_path_factory.mktemp(f"encoder-{request.param}")
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(var_dir),
        encoding.ENCODER_SETTING: request.param,
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    daphne = DaphneProcess(env=env, name=f"daphne-encoder-{request.param}")
    yield daphne
    daphne.stop()


def speak(url: str, text: str, fmt: str) -> bytes:
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt})
    request = urllib.request.Request(
        f"{url}/v1/audio/speech", data=body.encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return response.read()


TEXTS = (
    "Four requests at once.",
    "Each one gets its own audio, whole and in order.",
    "The third text is a little longer than the others, with a pause, and more words.",
    "Short.",
)


@pytest.mark.parametrize("fmt", ["pcm", "wav", *FORMATS])
def test_four_requests_at_once_each_get_their_own_audio(server, fmt):
    results: list[bytes | BaseException] = [b""] * len(TEXTS)
    barrier = threading.Barrier(len(TEXTS))

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = speak(server.url, TEXTS[index], fmt)
        except BaseException as error:  # reported below, with the others
            results[index] = error

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(TEXTS))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    durations = []
    for text, data in zip(TEXTS, results, strict=True):
        assert isinstance(data, bytes), data
        seconds = decoded_seconds(data, fmt)
        low, high = expected_seconds_range(text)
        assert low <= seconds <= high, (text, seconds)
        durations.append(seconds)
    # Nobody got another request's audio: the longest text is the longest audio.
    assert max(range(len(TEXTS)), key=durations.__getitem__) == 2
    # And the same request alone gives the same length.
    alone = decoded_seconds(speak(server.url, TEXTS[2], fmt), fmt)
    assert abs(alone - durations[2]) < 0.15


def test_stop_while_a_chunk_is_still_being_encoded_is_safe():
    # chat.encoding closes the body and stops the encoder at once: the thread still inside
    # libav must not have the encoder freed under it.
    async def scenario() -> None:
        for _ in range(20):
            encoder = await encoding.spawn("aac", RATE, "high", backend="pyav")
            body = encoding.encode(chunks(tone(4.0), size=RATE * 2), encoder, "aac")
            async for _ in body:
                break
            await body.aclose()
            await encoding.stop(encoder)
        await asyncio.sleep(0.5)  # let any encode still in a thread finish

    asyncio.run(scenario())
