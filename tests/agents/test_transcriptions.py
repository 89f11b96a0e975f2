"""POST /v1/audio/transcriptions: OpenAI's speech-to-text contract over real speech.

The audio is eSpeak NG saying a sentence, as WAV and encoded by ffmpeg (mp3, m4a, ogg/opus,
webm, flac); Whisper tiny.en transcribes it (loaded once for the module). The format matrix
and the refusals go through Django's async test client; the official ``openai`` SDK talks to
a real daphne process, and Parley's own OpenAISttEngine uses that daphne as its server.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import struct
import subprocess
import sys
import warnings
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
from channels.db import database_sync_to_async
from django.test import AsyncClient

from agents import transcription
from agents.engines.stt import Segment, Transcript
from agents.stt import get_stt
from streams.errors import ApiError
from tests.support.errors import flat_error
from tests.support.servers import PROJECT_ROOT, DaphneProcess, free_port

pytestmark = pytest.mark.timeout(120)

URL = "/v1/audio/transcriptions"
SENTENCE = "turn on the kitchen lights"
# ffmpeg output options and file suffix of each encoded upload.
ENCODINGS: dict[str, tuple[str, list[str]]] = {
    "mp3": ("mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
    "m4a": ("m4a", ["-c:a", "aac", "-b:a", "64k"]),
    "opus": ("ogg", ["-c:a", "libopus", "-b:a", "32k"]),
    "webm": ("webm", ["-c:a", "libopus", "-b:a", "32k"]),
    "flac": ("flac", ["-c:a", "flac"]),
}


# --- audio and helpers ------------------------------------------------------------------------


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_errors(heard: str, expected: str = SENTENCE) -> int:
    """Word-level edit distance between what was heard and what was said."""
    a, b = words(heard), words(expected)
    row = list(range(len(b) + 1))
    for i, word in enumerate(a, start=1):
        previous, row[0] = row[0], i
        for j, target in enumerate(b, start=1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (word != target))
    return row[-1]


def assert_heard(text: str) -> None:
    assert word_errors(text) <= 1, f"heard {text!r}, said {SENTENCE!r}"


def wav_bytes(pcm: bytes, rate: int) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)
    return buffer.getvalue()


def upload(data: bytes, name: str) -> io.BytesIO:
    file = io.BytesIO(data)
    file.name = name
    return file


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sentence as a WAV at eSpeak's rate, and encoded in each of ENCODINGS."""
    with warnings.catch_warnings():  # pydub: no ffmpeg on PATH (we set it), audioop
        warnings.simplefilter("ignore")
        from pydub import AudioSegment

    from speech.encoding import ffmpeg_exe
    from speech.tts.registry import build_engine

    engine = build_engine("espeak")
    pcm = b"".join(chunk.pcm for chunk in engine.synthesize(SENTENCE))
    folder = tmp_path_factory.mktemp("audio")
    files = {"wav": folder / "speech.wav"}
    files["wav"].write_bytes(wav_bytes(pcm, engine.sample_rate))
    AudioSegment.converter = ffmpeg_exe()
    segment = AudioSegment.from_file(files["wav"], format="wav")
    for kind, (suffix, options) in ENCODINGS.items():
        files[kind] = folder / f"speech.{suffix}"
        segment.export(files[kind], format="mp4" if suffix == "m4a" else suffix, parameters=options)
    return files


@pytest.fixture(scope="module", autouse=True)
def whisper() -> None:
    """Load Whisper once for the module (get_stt shares the engine with the view)."""
    asyncio.run(get_stt("whisper").warm())


async def post(fields: dict[str, Any] | None = None, **extra: Any) -> Any:
    return await AsyncClient().post(URL, fields or {}, **extra)


async def transcribe(path: Path, **fields: Any) -> Any:
    data = await asyncio.to_thread(path.read_bytes)
    return await post({"file": upload(data, path.name), "model": "whisper-1", **fields})


def error_of(response: Any) -> dict[str, Any]:
    """The error body in OpenAI's shape (an OpenAI path), flattened to code/detail/field."""
    assert response["Content-Type"] == "application/json", response.content
    return flat_error(json.loads(response.content), URL)


# --- formats in -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["wav", *ENCODINGS])
async def test_every_container_is_decoded_and_transcribed(audio, kind):
    response = await transcribe(audio[kind])
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    assert_heard(body["text"])
    assert body["usage"] == {"type": "duration", "seconds": 2}  # 1.6 s of speech, rounded up


async def test_a_large_upload_spooled_to_disk_is_transcribed(audio, settings):
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = 1024  # every upload becomes a temporary file
    response = await transcribe(audio["mp3"], response_format="text")
    assert response.status_code == 200, response.content
    assert_heard(response.content.decode())


@pytest.mark.parametrize(
    ("codec", "rate", "channels"),
    [("pcm_s24le", 44100, 2), ("pcm_f32le", 48000, 1), ("pcm_mulaw", 8000, 1)],
)
async def test_wav_of_any_sample_format_rate_and_channels(audio, codec, rate, channels, tmp_path):
    from speech.encoding import ffmpeg_exe

    path = tmp_path / "other.wav"
    options = ["-c:a", codec, "-ar", str(rate), "-ac", str(channels)]
    command = [ffmpeg_exe(), "-loglevel", "error", "-i", audio["wav"], *options, path]
    await asyncio.to_thread(subprocess.run, command, check=True)
    response = await transcribe(path)
    assert response.status_code == 200, response.content
    assert_heard(json.loads(response.content)["text"])


@pytest.mark.parametrize(
    "options",
    [
        ["-c:a", "pcm_u8"],
        ["-c:a", "pcm_s24le", "-ar", "44100", "-af", "pan=stereo|c0=c0|c1=c0"],  # copies
        ["-c:a", "pcm_f32le", "-ar", "8000"],
        ["-c:a", "pcm_mulaw"],
        ["-c:a", "libmp3lame", "-f", "mp3"],
    ],
    ids=["u8", "s24-stereo-44k", "f32-8k", "mulaw", "mp3"],
)
def test_decoding_keeps_the_length_and_level(audio, options):
    from speech.encoding import ffmpeg_exe

    source = transcription.audio_decode(transcription.AudioFile(size=1, path=audio["wav"]))
    command = [ffmpeg_exe(), "-loglevel", "error", "-i", audio["wav"], *options]
    if "-f" not in options:
        command += ["-f", "wav"]
    encoded = subprocess.run([*command, "pipe:1"], capture_output=True, check=True).stdout
    decoded = transcription.audio_decode(transcription.AudioFile(size=1, content=encoded))
    reference, heard = (np.frombuffer(pcm, "<i2").astype(float) for pcm in (source, decoded))
    assert abs(len(heard) - len(reference)) < 0.06 * transcription.SAMPLE_RATE  # codec padding
    assert abs(heard.mean()) < 200  # no offset (8-bit WAV is unsigned)
    rms = np.sqrt(np.mean(heard**2)) / np.sqrt(np.mean(reference**2))
    assert 0.8 < rms < 1.2, rms


async def test_a_streamed_wav_header_with_unknown_sizes_is_read(audio):
    data = bytearray(audio["wav"].read_bytes())
    data[4:8] = data[40:44] = b"\xff\xff\xff\xff"  # as /v1/audio/speech/stream sends it
    response = await post({"file": upload(bytes(data), "stream.wav"), "model": "whisper"})
    assert response.status_code == 200, response.content
    assert_heard(json.loads(response.content)["text"])


# --- formats out ------------------------------------------------------------------------------


async def test_text_is_plain_text(audio):
    response = await transcribe(audio["wav"], response_format="text")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response.content.decode().endswith("\n")
    assert_heard(response.content.decode())


async def test_verbose_json_has_openai_fields_and_segments(audio):
    response = await transcribe(audio["mp3"], response_format="verbose_json")
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    assert set(body) == {"task", "language", "duration", "text", "segments", "usage"}
    assert body["task"] == "transcribe" and body["language"] == "english"
    assert 1.2 < body["duration"] < 2.5
    assert_heard(body["text"])
    assert body["segments"], body
    for index, segment in enumerate(body["segments"]):
        assert set(segment) == {"id", "start", "end", "text"}
        assert segment["id"] == index
        assert 0 <= segment["start"] < segment["end"] <= body["duration"] + 0.01
    assert_heard(" ".join(s["text"] for s in body["segments"]))


@pytest.mark.parametrize(
    ("fmt", "content_type", "pattern"),
    [
        pytest.param(
            "srt",
            "application/x-subrip; charset=utf-8",
            r"1\n\d\d:\d\d:\d\d,\d{3} --> \d\d:\d\d:\d\d,\d{3}\n.+\n",
            id="srt",
        ),
        pytest.param(
            "vtt",
            "text/vtt; charset=utf-8",
            r"WEBVTT\n\n\d\d:\d\d:\d\d\.\d{3} --> \d\d:\d\d:\d\d\.\d{3}\n.+\n",
            id="vtt",
        ),
    ],
)
async def test_subtitles_from_segments(audio, fmt, content_type, pattern):
    response = await transcribe(
        audio["wav"], response_format=fmt, **{"timestamp_granularities[]": ["segment"]}
    )
    assert response.status_code == 200, response.content
    assert response["Content-Type"] == content_type
    text = response.content.decode()
    assert re.match(pattern, text), text
    cue_text = [line for line in text.splitlines() if line and not re.match(r"^\d|WEBVTT", line)]
    assert_heard(" ".join(cue_text))


async def test_stream_answers_openai_transcript_events(audio):
    response = await transcribe(audio["wav"], stream="true", prompt="Kitchen, lights.")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    body = b"".join([piece async for piece in response.streaming_content]).decode()
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: ")]
    assert body.count("\n\n") == len(events)  # one data line per event
    *deltas, done = events
    assert deltas and {e["type"] for e in deltas} == {"transcript.text.delta"}
    assert done["type"] == "transcript.text.done"
    assert "".join(e["delta"] for e in deltas) == done["text"]
    assert len(deltas) == len(done["text"].split())  # word by word
    assert_heard(done["text"])
    usage = done["usage"]
    assert usage["type"] == "tokens"
    assert usage["input_token_details"] == {"audio_tokens": 80, "text_tokens": 4}  # 1.59 s
    assert usage["output_tokens"] == len(re.findall(r"\w+|[^\w\s]", done["text"]))
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


async def test_openai_extras_are_accepted_and_ignored(audio):
    response = await transcribe(
        audio["wav"],
        model="gpt-4o-mini-transcribe",
        language="en",
        temperature="0.3",
        chunking_strategy="auto",
        **{"include[]": ["logprobs"], "timestamp_granularities[]": ["segment"]},
    )
    assert response.status_code == 200, response.content
    assert_heard(json.loads(response.content)["text"])


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "status", "code", "field"),
    [
        ({"model": "whisper-1"}, 400, "missing_file", "file"),
        ({"model": "whisper-1", "file": "not a file"}, 400, "invalid_file", "file"),
        ({"file": "AUDIO"}, 400, "missing_model", "model"),
        ({"file": "AUDIO", "model": "tts-1"}, 400, "unknown_model", "model"),
        ({"file": "AUDIO", "model": "whisper-1", "language": "fr"}, 400,
         "unsupported_language", "language"),
        ({"file": "AUDIO", "model": "whisper-1", "language": "english"}, 400,
         "invalid_language", "language"),
        ({"file": "AUDIO", "model": "whisper-1", "response_format": "mp3"}, 400,
         "invalid_response_format", "response_format"),
        ({"file": "AUDIO", "model": "whisper-1", "temperature": "1.5"}, 400,
         "invalid_temperature", "temperature"),
        ({"file": "AUDIO", "model": "whisper-1", "timestamp_granularities[]": ["word"]}, 400,
         "unsupported_timestamp_granularity", "timestamp_granularities[]"),
        ({"file": "AUDIO", "model": "whisper-1", "stream": "maybe"}, 400, "invalid_stream",
         "stream"),
        ({"file": "AUDIO", "model": "whisper-1", "stream": "true", "response_format": "srt"},
         400, "unsupported_stream_format", "response_format"),
        ({"file": "AUDIO", "model": "whisper-1", "stream": "true",
          "response_format": "verbose_json"}, 400, "unsupported_stream_format", "response_format"),
    ],
)  # fmt: skip
async def test_bad_fields_are_json_errors_naming_the_field(audio, fields, status, code, field):
    if fields.get("file") == "AUDIO":
        fields = {**fields, "file": upload(audio["wav"].read_bytes(), "speech.wav")}
    response = await post(fields)
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (status, code, field), body
    if code == "unknown_model":
        assert all(name in body["detail"] for name in transcription.MODELS)
    if code == "unsupported_language":
        assert "English only" in body["detail"]


@pytest.mark.parametrize(
    ("data", "name", "code"),
    [
        (b"", "empty.wav", "empty_file"),
        (b"These are the minutes of the meeting, not audio.\n" * 20, "notes.mp3",
         "undecodable_audio"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00" + b"\x00" * 40, "broken.wav",
         "undecodable_audio"),
        (wav_bytes(b"\x10\x00" * 800, 16000), "short.wav", "audio_too_short"),  # 50 ms
    ],
)  # fmt: skip
async def test_bad_files_are_refused_with_field_file(data, name, code):
    response = await post({"file": upload(data, name), "model": "whisper-1"})
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (400, code, "file"), body
    if code == "undecodable_audio":
        assert "could not decode" in body["detail"].lower()


async def test_a_body_that_is_not_multipart_is_415():
    response = await post({"model": "whisper-1"}, content_type="application/json")
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (
        415,
        "unsupported_media_type",
        "Content-Type",
    )
    assert "multipart/form-data" in body["detail"]


async def test_a_multipart_body_without_a_boundary_is_400():
    response = await AsyncClient().post(URL, b"file=x", content_type="multipart/form-data")
    assert response.status_code == 400
    assert error_of(response)["error"] == "malformed_multipart"


async def test_too_many_parts_are_400_not_500(settings, audio):
    settings.DATA_UPLOAD_MAX_NUMBER_FIELDS = 3
    response = await transcribe(audio["wav"], a="1", b="2", c="3", d="4")
    assert response.status_code == 400
    assert error_of(response)["error"] == "malformed_multipart"


@pytest.mark.parametrize("size", [20_000, 200_000])
async def test_a_file_over_the_limit_is_413(settings, size):
    # 20 kB passes the Content-Length check (limit + 64 kB of room for the other fields) and
    # is stopped while parsed; 200 kB is refused by its Content-Length, before parsing.
    settings.PARLEY_STT_MAX_BYTES = 10_000
    response = await post({"file": upload(b"\0" * size, "big.wav"), "model": "whisper-1"})
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (413, "file_too_large", "file")
    assert "10000" in body["detail"]


async def test_fields_over_djangos_memory_limit_are_413_not_500(settings, audio):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = await transcribe(audio["wav"], prompt="kitchen " * 500)
    assert response.status_code == 413
    assert error_of(response)["error"] == "body_too_large"


async def test_other_methods_are_405_json():
    response = await AsyncClient().get(URL)
    assert response.status_code == 405 and response["Allow"] == "POST"
    assert error_of(response)["error"] == "method_not_allowed"


async def test_an_engine_that_cannot_run_is_503(settings, audio):
    settings.PARLEY_STT_URL = ""  # the openai engine has no server to call
    response = await transcribe(audio["wav"], model="openai")
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (
        503,
        "engine_unavailable",
        "model",
    )


async def test_an_engine_failure_is_502(settings, audio):
    settings.PARLEY_STT_URL = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    settings.PARLEY_STT_TIMEOUT_S = 5.0
    response = await transcribe(audio["wav"], model="openai")
    body = error_of(response)
    assert (response.status_code, body["error"]) == (502, "transcription_failed"), body
    assert "cannot reach" in body["detail"]


@pytest.mark.django_db(transaction=True)
async def test_with_keys_required_a_transcription_needs_one(settings, audio):
    from streams.auth import api_key_create

    settings.PARLEY_REQUIRE_AUTH = True
    _, key = await database_sync_to_async(api_key_create)(speaker="listener")
    refused = await transcribe(audio["wav"])
    allowed = await post(
        {"file": upload(audio["wav"].read_bytes(), "a.wav"), "model": "whisper-1"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert refused.status_code == 401 and error_of(refused)["error"] == "auth_required"
    assert allowed.status_code == 200, allowed.content


# --- a request's cost is bounded by its size: headers, sample rates, duration ----------------


def raw_wav(rate: int, channels: int, data: bytes, bits: int = 16, tag: int = 1) -> bytes:
    """A WAV whose header says whatever it is told (the wave module refuses odd values)."""
    block = channels * bits // 8
    fmt = struct.pack("<IHHIIHH", 16, tag, channels, rate, rate * block, block, bits)
    size = struct.pack("<I", len(data))
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data" + size + data


def encode(source: str, seconds: float, options: list[str], fmt: str) -> bytes:
    """ffmpeg's lavfi ``source`` for ``seconds``, encoded; the bytes."""
    from speech.encoding import ffmpeg_exe

    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source,
               "-t", str(seconds), *options, "-f", fmt, "pipe:1"]  # fmt: skip
    return subprocess.run(command, capture_output=True, check=True).stdout


@pytest.mark.parametrize(
    ("rate", "channels", "bits", "tag", "code"),
    [
        (0, 1, 16, 1, "unsupported_sample_rate"),
        (1, 1, 16, 1, "unsupported_sample_rate"),  # 2 KB would be 1000 s at 16 kHz
        (999, 1, 16, 1, "unsupported_sample_rate"),
        (1_000_000, 1, 16, 1, "unsupported_sample_rate"),
        (16000, 0, 16, 1, "undecodable_audio"),
        (16000, 1, 0, 1, "undecodable_audio"),
        (16000, 1, 64, 1, "undecodable_audio"),  # no 64-bit integer PCM
        (16000, 1, 16, 3, "undecodable_audio"),  # 16-bit float
        (16000, 1, 16, 7, "undecodable_audio"),  # 16-bit µ-law
    ],
)
async def test_a_wav_header_with_impossible_values_is_refused_before_decoding(
    rate, channels, bits, tag, code
):
    data = raw_wav(rate, channels, bytes(16000), bits, tag)
    response = await post({"file": upload(data, "odd.wav"), "model": "whisper-1"})
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (400, code, "file"), body
    if code == "unsupported_sample_rate":
        assert f"{rate} Hz" in body["detail"] and "1000" in body["detail"]


@pytest.mark.parametrize("kind", ["wav", "flac", "m4a"])
async def test_a_header_that_promises_too_long_is_refused_before_decoding(
    audio, kind, settings, monkeypatch
):
    settings.PARLEY_STT_MAX_SECONDS = 1.0  # the sentence is 1.6 s

    def no_ffmpeg() -> str:
        raise AssertionError("ffmpeg ran")  # a 500, not the 400 asserted

    monkeypatch.setattr(transcription, "ffmpeg_exe", no_ffmpeg)
    response = await transcribe(audio[kind])
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (400, "audio_too_long", "file")
    assert "its header says" in body["detail"] and "PARLEY_STT_MAX_SECONDS" in body["detail"]


def test_header_seconds_reads_wav_flac_and_mp4(audio):
    for kind, demuxer in (("wav", "wav"), ("flac", "flac"), ("m4a", "mov")):
        data = audio[kind].read_bytes()
        seconds = transcription.header_seconds(demuxer, data, len(data))
        assert seconds is not None and 1.4 < seconds < 1.8, (kind, seconds)
    for kind, demuxer in (("mp3", "mp3"), ("opus", "ogg"), ("webm", "matroska")):
        data = audio[kind].read_bytes()
        assert transcription.header_seconds(demuxer, data, len(data)) is None  # not stated
    # A streamed WAV header (0xFFFFFFFF sizes) is as long as the bytes that follow it.
    wav = bytearray(audio["wav"].read_bytes())
    wav[4:8] = wav[40:44] = b"\xff\xff\xff\xff"
    streamed = transcription.header_seconds("wav", bytes(wav), len(wav))
    assert streamed == transcription.header_seconds("wav", audio["wav"].read_bytes(), len(wav))


@pytest.mark.parametrize("kind", ["mp3", "opus", "webm", "flac-without-length"])
async def test_audio_whose_header_does_not_say_is_cut_at_the_limit(audio, kind, settings):
    settings.PARLEY_STT_MAX_SECONDS = 1.0
    if kind == "flac-without-length":  # STREAMINFO's 36-bit sample count 0: "unknown"
        data = bytearray(audio["flac"].read_bytes())
        data[21] &= 0xF0
        data[22:26] = bytes(4)
        path = audio["flac"].with_name("unknown-length.flac")
        path.write_bytes(bytes(data))
    else:
        path = audio[kind]
    response = await transcribe(path)
    body = error_of(response)
    assert (response.status_code, body["error"], body["field"]) == (400, "audio_too_long", "file")
    assert "over 1 s" in body["detail"]


async def test_audio_within_the_limit_is_transcribed(audio, settings):
    settings.PARLEY_STT_MAX_SECONDS = 2.0
    for kind in ("wav", "opus"):
        response = await transcribe(audio[kind])
        assert response.status_code == 200, response.content
        assert_heard(json.loads(response.content)["text"])


def test_ffmpeg_stops_a_second_past_the_limit(monkeypatch):
    # Ten minutes of Opus at 6 kb/s (~450 KB) would be 19 MB of PCM: only 3 s are decoded.
    data = encode("sine=f=300:r=48000", 600, ["-c:a", "libopus", "-b:a", "6k"], "ogg")
    decoded: list[int] = []
    run = subprocess.run

    def measured_run(command: list[str], **kwargs: Any) -> Any:
        done = run(command, **kwargs)
        decoded.append(len(done.stdout))
        return done

    monkeypatch.setattr(transcription.subprocess, "run", measured_run)
    with pytest.raises(ApiError) as refused:
        transcription.audio_decode(transcription.AudioFile(size=len(data), content=data),
                                   max_seconds=2)  # fmt: skip
    monkeypatch.undo()
    assert (refused.value.code, refused.value.field) == ("audio_too_long", "file")
    assert decoded == [3 * transcription.BYTES_PER_SECOND]
    # ffmpeg's -t is a second past the limit: audio up to it is decoded whole.
    data = encode("sine=f=300:r=48000", 2.5, ["-c:a", "libopus", "-b:a", "16k"], "ogg")
    pcm = transcription.audio_decode(transcription.AudioFile(size=len(data), content=data),
                                     max_seconds=3)  # fmt: skip
    assert 2.4 < len(pcm) / transcription.BYTES_PER_SECOND < 2.6


@pytest.mark.parametrize("codec", ["flac", "vorbis"])
def test_a_compressed_header_with_an_absurd_rate_is_refused(codec):
    if codec == "flac":
        data = bytearray(encode("anullsrc=r=8000:cl=mono", 1, ["-c:a", "flac"], "flac"))
        data[18:21] = bytes([0x00, 0x00, 0x10 | (data[20] & 0x0F)])  # 20-bit rate: 1 Hz
    else:
        data = bytearray(encode("anullsrc=r=8000:cl=mono", 1, ["-c:a", "libvorbis"], "ogg"))
        at = data.find(b"\x01vorbis") + 12
        data[at : at + 4] = struct.pack("<I", 500)
    with pytest.raises(ApiError) as refused:
        transcription.audio_decode(transcription.AudioFile(size=len(data), content=bytes(data)))
    assert (refused.value.code, refused.value.field) == ("unsupported_sample_rate", "file")


async def test_a_file_without_an_audio_stream_says_so():
    data = encode(
        "testsrc=size=64x64:rate=5",
        1,
        ["-c:v", "mpeg4", "-movflags", "frag_keyframe+empty_moov"],
        "mp4",
    )
    response = await post({"file": upload(data, "video.mp4"), "model": "whisper-1"})
    body = error_of(response)
    assert (response.status_code, body["error"]) == (400, "undecodable_audio"), body
    assert "no audio stream" in body["detail"]


# --- a body without a Content-Length ----------------------------------------------------------


async def chunked_post(body: bytes, headers: list[tuple[bytes, bytes]] = ()) -> tuple[int, Any]:
    """POST ``body`` as multipart through the ASGI application, with no Content-Length (as
    a ``Transfer-Encoding: chunked`` upload arrives), in three pieces."""
    from channels.testing import ApplicationCommunicator

    from config.asgi import application

    scope = {
        "type": "http", "http_version": "1.1", "method": "POST", "path": URL,
        "query_string": b"", "scheme": "http", "server": ("testserver", 80),
        "headers": [(b"content-type", b"multipart/form-data; boundary=" + BOUNDARY),
                    (b"transfer-encoding", b"chunked"), *headers],
    }  # fmt: skip
    communicator = ApplicationCommunicator(application, scope)
    third = len(body) // 3 + 1
    pieces = [body[i : i + third] for i in range(0, len(body), third)]
    for index, piece in enumerate(pieces):
        more = index < len(pieces) - 1
        await communicator.send_input({"type": "http.request", "body": piece, "more_body": more})
    start = await communicator.receive_output(60)
    content = b""
    while True:
        message = await communicator.receive_output(60)
        content += message.get("body", b"")
        if not message.get("more_body"):
            break
    return start["status"], json.loads(content)


BOUNDARY = b"parleyboundary"


def multipart(wav: bytes, **fields: str) -> bytes:
    parts = [
        b"--" + BOUNDARY + f'\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value.encode() + b"\r\n"
        for name, value in fields.items()
    ]  # fmt: skip
    parts.append(
        b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="q.wav"'
        b"\r\nContent-Type: audio/wav\r\n\r\n" + wav + b"\r\n"
    )
    return b"".join(parts) + b"--" + BOUNDARY + b"--\r\n"


@pytest.mark.django_db(transaction=True)
async def test_a_chunked_upload_is_transcribed(audio):
    body = multipart(audio["wav"].read_bytes(), model="whisper-1", response_format="json")
    status, payload = await chunked_post(body)
    assert status == 200, payload
    assert_heard(payload["text"])


@pytest.mark.django_db(transaction=True)
async def test_a_chunked_upload_over_the_limit_is_413(settings):
    settings.PARLEY_STT_MAX_BYTES = 10_000  # + 64 KiB of room: 100 kB passes both
    status, payload = await chunked_post(multipart(bytes(100_000), model="whisper-1"))
    payload = flat_error(payload, URL)
    assert (status, payload["error"], payload["field"]) == (413, "file_too_large", "file")
    assert "without a Content-Length" in payload["detail"]


@pytest.mark.django_db(transaction=True)
async def test_an_invalid_content_length_is_400(audio):
    body = multipart(audio["wav"].read_bytes(), model="whisper-1")
    status, payload = await chunked_post(body, [(b"content-length", b"lots")])
    payload = flat_error(payload, URL)
    assert (status, payload["error"], payload["field"]) == (
        400,
        "invalid_content_length",
        "Content-Length",
    )


# --- pure helpers -----------------------------------------------------------------------------


def test_subtitle_timestamps_and_documents():
    assert transcription.srt_timestamp(0) == "00:00:00,000"
    assert transcription.srt_timestamp(3723.4567) == "01:02:03,457"
    assert transcription.vtt_timestamp(59.9996) == "00:01:00.000"
    assert transcription.vtt_timestamp(360_000.5) == "100:00:00.500"
    segments = [Segment(0.0, 1.5, " Hello there."), Segment(1.5, 2.25, "General Kenobi.")]
    assert transcription.srt_document(segments) == (
        "1\n00:00:00,000 --> 00:00:01,500\nHello there.\n\n"
        "2\n00:00:01,500 --> 00:00:02,250\nGeneral Kenobi.\n"
    )
    assert transcription.vtt_document(segments) == (
        "WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello there.\n\n"
        "00:00:01.500 --> 00:00:02.250\nGeneral Kenobi.\n"
    )
    assert transcription.srt_document([]) == "" and transcription.vtt_document([]) == "WEBVTT\n\n"
    # An engine that gave no segments: one cue over the whole audio.
    plain = Transcript(text="Hi there.", language="en", duration_s=1.25)
    assert transcription.transcript_segments(plain, 1.25) == (Segment(0.0, 1.25, "Hi there."),)


@pytest.mark.parametrize("text", ["", "One.", " Hello,  brave new world. ", "a\nb"])
def test_deltas_are_words_that_add_up_to_the_text(text):
    deltas = transcription.text_deltas(text)
    assert "".join(deltas) == text
    assert len(deltas) == len(text.split())


def test_sniffing_names_demuxer_and_decoder_without_ffprobe(audio):
    found = {kind: transcription.sniff_audio(path.read_bytes()) for kind, path in audio.items()}
    assert found == {
        "wav": ("wav", "pcm_s16le"),
        "mp3": ("mp3", "mp3"),
        "m4a": ("mov", "aac"),
        "opus": ("ogg", "opus"),
        "webm": ("matroska", "opus"),
        "flac": ("flac", "flac"),
    }
    assert transcription.sniff_audio(b"????", "voice.m4a") == ("mov", "aac")
    assert transcription.sniff_audio(b"????", "notes.txt") is None


def test_languages_are_whispers():
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    assert set(transcription.LANGUAGES) == set(_LANGUAGE_CODES)


async def test_the_openapi_schema_documents_the_endpoint():
    from drf_spectacular.validation import validate_schema

    response = await AsyncClient().get("/openapi.json")
    schema = json.loads(response.content)
    validate_schema(schema)
    operation = schema["paths"][URL]["post"]
    request = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert request["$ref"].endswith("/TranscriptionRequest")
    fields = schema["components"]["schemas"]["TranscriptionRequest"]
    assert fields["required"] == ["file", "model"]
    assert fields["properties"]["response_format"]["enum"] == list(transcription.RESPONSE_FORMATS)
    assert set(operation["responses"]["200"]["content"]) == {
        "application/json",
        "text/plain",
        "application/x-subrip",
        "text/vtt",
        "text/event-stream",
    }
    assert {"400", "413", "415", "502", "503"} <= set(operation["responses"])


# --- the openai SDK against a real daphne ----------------------------------------------------


@pytest.fixture(scope="module")
def daphne(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneProcess]:
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        # The embedded default whatever this shell has set: SQLite under a private var dir.
        "PARLEY_VAR_DIR": str(tmp_path_factory.mktemp("stt-var")),
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_REQUIRE_AUTH": None,
        "PARLEY_STT_ENGINE": "whisper",
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    server = DaphneProcess(env=env, name="daphne-stt")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def sdk(daphne: DaphneProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daphne.url}/v1", api_key="unused", max_retries=0)


def test_sdk_json(sdk, audio):
    with open(audio["mp3"], "rb") as file:
        result = sdk.audio.transcriptions.create(model="whisper-1", file=file)
    assert isinstance(result, openai.types.audio.Transcription)
    assert_heard(result.text)
    assert result.usage.type == "duration" and result.usage.seconds == 2


def test_sdk_verbose_json(sdk, audio):
    with open(audio["wav"], "rb") as file:
        result = sdk.audio.transcriptions.create(
            model="gpt-4o-transcribe",
            file=file,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
            language="en",
        )
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    assert result.language == "english" and 1.2 < result.duration < 2.5
    assert_heard(result.text)
    assert result.segments and result.segments[0].start == 0.0


def test_sdk_srt(sdk, audio):
    with open(audio["m4a"], "rb") as file:
        result = sdk.audio.transcriptions.create(
            model="whisper-1", file=file, response_format="srt"
        )
    assert isinstance(result, str)
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n", result), result
    assert_heard(result.splitlines()[2])


def test_sdk_stream(sdk, audio):
    with open(audio["opus"], "rb") as file:
        stream = sdk.audio.transcriptions.create(model="whisper-1", file=file, stream=True)
        events = list(stream)
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    done = events[-1]
    assert done.type == "transcript.text.done" and len(events) > 2
    assert "".join(e.delta for e in events[:-1]) == done.text
    assert_heard(done.text)
    assert done.usage.type == "tokens" and done.usage.output_tokens >= len(words(done.text))


def test_sdk_errors_are_openai_bad_requests(sdk, audio):
    with open(audio["wav"], "rb") as file, pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.transcriptions.create(
            model="whisper-1", file=file, timestamp_granularities=["word"]
        )
    # Parley's error shape, not OpenAI's: the SDK finds no "message" and says only the status.
    assert caught.value.status_code == 400
    assert caught.value.response.json()["field"] == "timestamp_granularities[]"


async def test_parleys_openai_engine_can_use_another_parley(daphne, audio, settings):
    # This process's "openai" engine transcribes through the daphne's Whisper.
    settings.PARLEY_STT_URL = f"{daphne.url}/v1"
    settings.PARLEY_STT_MODEL = "whisper-1"
    response = await transcribe(audio["flac"], model="openai", response_format="verbose_json")
    assert response.status_code == 200, response.content
    body = json.loads(response.content)
    assert_heard(body["text"])
    assert body["segments"] and body["language"] == "english"
