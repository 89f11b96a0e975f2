"""POST /audio/stream: every format at every quality, piece sizes, and every bad input."""

from __future__ import annotations

import asyncio

import pytest

from chat.encoding import FORMATS, QUALITIES, encoding_for
from tests.chat.conftest import UNAVAILABLE, asgi, decode, http, read_wav
from tests.speech.audio import probed

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "Direct streaming test. One, two, three."
RATES = {"low": 16000, "medium": 22050, "high": 24000}


async def speak(**fields):
    exchange = await asgi("POST", "/audio/stream", {"text": TEXT, **fields})
    assert exchange.status == 200, exchange.body[:300]
    return exchange


async def test_defaults_are_a_wav_at_22050_in_4096_byte_pieces():
    exchange = await speak()
    assert exchange.headers["content-type"] == "audio/wav"
    assert exchange.headers["x-sample-rate"] == "22050"
    assert exchange.headers["x-audio-quality"] == "medium"
    assert exchange.body[4:8] == b"\xff\xff\xff\xff"
    rate, channels, seconds = read_wav(exchange.body)
    assert (rate, channels) == (22050, 1)
    assert 1.5 < seconds < 6
    assert {len(p) for p in exchange.pieces[:-1]} == {4096}


async def test_chunk_size_sets_the_piece_size():
    exchange = await speak(chunk_size=8192, format="pcm")
    assert {len(p) for p in exchange.pieces[:-1]} == {8192}
    assert len(exchange.pieces[-1]) <= 8192


@pytest.mark.parametrize("quality", list(QUALITIES))
async def test_every_format_at_every_quality(quality):
    reference = None
    sizes = {}
    for fmt in FORMATS:
        exchange = await speak(format=fmt, quality=quality, chunk_size=1024)
        assert exchange.headers["content-type"] == encoding_for(fmt, quality).content_type
        assert exchange.headers["x-audio-format"] == fmt
        data = exchange.body
        sizes[fmt] = len(data)
        if fmt == "wav":
            rate, _, seconds = read_wav(data)
            reference = seconds
        elif fmt == "pcm":
            rate = int(exchange.headers["x-sample-rate"])
            seconds = len(data) / (2 * rate)
        else:
            rate, seconds = decode(data, fmt)
            assert exchange.headers.get("x-bitrate") or fmt == "flac"
        sent_rate = int(exchange.headers["x-sample-rate"])
        # Opus takes 8/12/16/24/48 kHz only, and its decoders always output 48 kHz.
        assert sent_rate == (24000 if fmt == "opus" and quality == "medium" else RATES[quality])
        assert rate == (48000 if fmt == "opus" else sent_rate), (fmt, quality)
        # espeak output varies a little run to run; codecs pad a few frames.
        assert reference is not None and abs(seconds - reference) < 0.35 * reference, fmt
    assert sizes["mp3"] < sizes["wav"] and sizes["opus"] < sizes["wav"]


async def test_quality_changes_rate_and_bitrate_for_real():
    low, high = await speak(format="mp3", quality="low"), await speak(format="mp3", quality="high")
    assert (low.headers["x-bitrate"], high.headers["x-bitrate"]) == ("64k", "160k")
    assert len(high.body) > 2 * len(low.body)
    low_wav, high_wav = await speak(quality="low"), await speak(quality="high")
    assert read_wav(low_wav.body)[0] == 16000 and read_wav(high_wav.body)[0] == 24000
    assert len(high_wav.body) > 1.3 * len(low_wav.body)


async def test_eight_simultaneous_streams_all_complete_with_correct_audio():
    formats = ["wav", "pcm", "mp3", "opus", "aac", "flac", "wav", "mp3"]
    texts = [f"Request number {n} of eight, spoken at the same time." for n in range(8)]
    exchanges = await asyncio.gather(
        *(
            asgi("POST", "/audio/stream", {"text": t, "format": f})
            for t, f in zip(texts, formats, strict=True)
        )
    )
    for fmt, exchange in zip(formats, exchanges, strict=True):
        assert exchange.status == 200
        if fmt == "wav":
            seconds = read_wav(exchange.body)[2]
        elif fmt == "pcm":
            seconds = len(exchange.body) / 2 / 22050
        else:
            seconds = decode(exchange.body, fmt)[1]
        assert 2 < seconds < 6, fmt


async def test_voice_and_speed_pass_through():
    slow, fast = await speak(speed=0.6), await speak(speed=2.0, voice="nova")
    assert read_wav(slow.body)[2] > 2 * read_wav(fast.body)[2]


@pytest.mark.parametrize(
    ("body", "field", "error"),
    [
        ({}, "text", "invalid_text"),
        ({"text": " "}, "text", "invalid_text"),
        ({"text": "x" * 4097}, "text", "invalid_text"),
        ({"text": 5}, "text", "invalid_text"),
        ({"text": ["hi"]}, "text", "invalid_text"),
        ({"text": "hi", "voice": 5}, "voice", "invalid_voice"),
        ({"text": "hi", "chunk_size": 0}, "chunk_size", "invalid_chunk_size"),
        ({"text": "hi", "chunk_size": 10**9}, "chunk_size", "invalid_chunk_size"),
        ({"text": "hi", "chunk_size": "big"}, "chunk_size", "invalid_chunk_size"),
        ({"text": "hi", "chunk_size": True}, "chunk_size", "invalid_chunk_size"),
        ({"text": "hi", "format": "ogg"}, "format", "invalid_choice"),
        ({"text": "hi", "format": None}, "format", "invalid_format"),
        ({"text": "hi", "quality": "ultra"}, "quality", "invalid_choice"),
        ({"text": "hi", "speed": 9}, "speed", "invalid_speed"),
        ({"text": "hi", "voice": "no-such-voice"}, "voice", "voice_not_found"),
        ({"text": "hi", "bitrate": "320k"}, "bitrate", "invalid_bitrate"),
        (["hi"], None, "malformed_json"),
    ],
)
async def test_bad_input_is_a_json_error_with_the_field(body, field, error):
    exchange = await asgi("POST", "/audio/stream", body)
    status = 404 if error == "voice_not_found" else 400
    assert exchange.status == status, exchange.body
    answer = exchange.json()
    assert (answer["error"], answer["field"]) == (error, field)
    assert answer["detail"] and answer["code"] == f"HTTP_{status}"


async def test_no_engine_is_503(broken_tts):
    async with http() as client:
        response = await client.post("/audio/stream", json={"text": "hi"})
    assert response.status_code == 503 and response.json() == UNAVAILABLE


@pytest.mark.parametrize(("quality", "kbps"), [("low", 64), ("medium", 128), ("high", 160)])
async def test_mp3_bitrate_header_is_what_the_stream_has(quality, kbps):
    # LAME's MPEG-2 (16-24 kHz) stops at 160 kb/s: "high" asks no more than it gets.
    exchange = await speak(format="mp3", quality=quality)
    assert exchange.headers["x-bitrate"] == f"{kbps}k"
    assert probed(exchange.body) == (RATES[quality], kbps)
