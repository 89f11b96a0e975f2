"""FLAC from /v1/audio/speech is a complete file: STREAMINFO states the sample count, the
MD5 of the audio and the frame sizes, so every reader gets its length.

Written to a pipe, ffmpeg leaves those 0 ("unknown", legal in RFC 9639) and libsndfile
(Python's soundfile, Sonic Visualiser) then takes the length as 2**63-1 frames and cannot
read the file at all. The encoder now writes to a file it can seek back into.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import hashlib
import io
import json
import os
import struct
import subprocess
import tempfile

import imageio_ffmpeg
import soundfile

from speech import encoding

TEXT = "The quick brown fox jumps over the lazy dog. Then it runs far away into the woods."


def streaminfo(data: bytes) -> dict:
    """The STREAMINFO block of a FLAC file (the first metadata block, RFC 9639 §8.2)."""
    assert data[:4] == b"fLaC"
    assert data[4] & 0x7F == 0 and int.from_bytes(data[5:8], "big") == 34
    block = data[8:42]
    packed = int.from_bytes(block[10:18], "big")
    return {
        "min_block": int.from_bytes(block[0:2], "big"),
        "max_block": int.from_bytes(block[2:4], "big"),
        "min_frame": int.from_bytes(block[4:7], "big"),
        "max_frame": int.from_bytes(block[7:10], "big"),
        "sample_rate": packed >> 44,
        "channels": ((packed >> 41) & 0x7) + 1,
        "bits": ((packed >> 36) & 0x1F) + 1,
        "samples": packed & ((1 << 36) - 1),
        "md5": block[18:34].hex(),
    }


def ffmpeg_pcm(data: bytes) -> bytes:
    result = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-hide_banner", "-loglevel", "error", "-i", "pipe:0", "-f", "s16le", "pipe:1"),
        ],
        input=data,
        capture_output=True,
        check=True,
    )
    return result.stdout


def fetch(sdk, **fields) -> tuple[bytes, dict]:
    fields = {"model": "tts-1", "voice": "alloy", "input": TEXT, **fields}
    with sdk.audio.speech.with_streaming_response.create(**fields) as response:
        return response.read(), dict(response.headers)


def test_flac_header_states_length_and_md5_and_every_reader_decodes_it(sdk):
    # At eSpeak's own rate nothing is resampled (soxr's streamed output depends on how the
    # input was chunked), and eSpeak NG is deterministic: the same PCM both times.
    native = {"sample_rate": 22050}
    flac, headers = fetch(sdk, response_format="flac", extra_body=native)
    pcm, pcm_headers = fetch(sdk, response_format="pcm", extra_body=native)
    assert headers["content-type"] == "audio/flac"
    info = streaminfo(flac)
    rate = int(headers["x-sample-rate"])
    assert (info["sample_rate"], info["channels"], info["bits"]) == (rate, 1, 16) == (22050, 1, 16)
    assert pcm_headers["x-sample-rate"] == "22050"
    # Lossless: the file holds exactly the PCM the same request gives raw.
    assert info["samples"] == len(pcm) // 2 > 22050
    assert info["md5"] == hashlib.md5(pcm).hexdigest()  # MD5 of the s16le samples
    assert 0 < info["min_frame"] <= info["max_frame"] < len(flac)
    assert info["min_block"] == info["max_block"] > 0
    # ffmpeg decodes the samples; soundfile (libsndfile) reads the whole file at once.
    assert ffmpeg_pcm(flac) == pcm
    samples, sample_rate = soundfile.read(io.BytesIO(flac), dtype="int16")
    assert sample_rate == 22050 and samples.tobytes() == pcm
    assert abs(soundfile.info(io.BytesIO(flac)).duration - len(pcm) / 2 / 22050) < 1e-6


def test_sse_flac_deltas_are_the_same_complete_file(sdk, daphne):
    import httpx

    body = {"input": TEXT, "voice": "alloy", "response_format": "flac", "stream_format": "sse"}
    response = httpx.post(f"{daphne.url}/v1/audio/speech", json=body, timeout=60)
    assert response.status_code == 200
    audio = b""
    for block in response.text.split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if lines.get("event") == "speech.audio.delta":
            audio += base64.b64decode(json.loads(lines["data"])["audio"])
    info = streaminfo(audio)
    assert info["samples"] > 24000 and info["md5"] != "0" * 32
    assert soundfile.read(io.BytesIO(audio), dtype="int16")[0].size == info["samples"]


def test_the_encoders_temporary_file_is_removed_whether_used_or_discarded():
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "parley-*.flac")))

    async def scenario() -> bytes:
        discarded = await encoding.spawn("flac", 16000, "fast")
        await encoding.stop(discarded)  # e.g. the request was refused after spawning

        async def pcm():
            yield struct.pack("<1600h", *range(1600))

        used = await encoding.spawn("flac", 16000, "fast")
        return b"".join([piece async for piece in encoding.encode(pcm(), used, "flac")])

    flac = asyncio.run(scenario())
    assert streaminfo(flac)["samples"] == 1600
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "parley-*.flac")))
    assert after <= before
