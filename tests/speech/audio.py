"""Decode what the server sent, with ffmpeg, to check formats and durations."""

from __future__ import annotations

import io
import re
import subprocess
import wave

import imageio_ffmpeg

DECODE_RATE = 16000


def decoded_seconds(data: bytes, fmt: str, *, pcm_rate: int = 24000) -> float:
    """Seconds of audio ffmpeg decodes from ``data`` in format ``fmt`` (fails if it cannot)."""
    source = ["-f", "s16le", "-ar", str(pcm_rate), "-ac", "1"] if fmt == "pcm" else []
    result = subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-hide_banner", "-loglevel", "error", *source, "-i", "pipe:0"),
            *("-f", "s16le", "-ac", "1", "-ar", str(DECODE_RATE), "pipe:1"),
        ],
        input=data,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return len(result.stdout) / (2 * DECODE_RATE)


def expected_seconds_range(text: str) -> tuple[float, float]:
    """espeak at 175 wpm speaks ~0.34 s a word; pauses add some. A generous band."""
    words = len(text.split())
    return words * 0.2, words * 0.6 + 1.0


def sample_wav(seconds: float = 1.0) -> bytes:
    """A small 16 kHz mono WAV (a square-ish wave) to upload as a voice sample."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(16000)
        wav.writeframes(b"\x20\x00\xe0\xff" * int(8000 * seconds))
    return buffer.getvalue()


def probed(data: bytes) -> tuple[int, int | None]:
    """(sample rate, stream bitrate in kbit/s) as ffmpeg reads them from encoded audio: for
    CBR mp3 the frame headers' bitrate, for aac ffmpeg's estimate from size and duration."""
    result = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", "pipe:0"],
        input=data,
        capture_output=True,
        check=False,
    )
    info = result.stderr.decode("utf-8", "replace")
    stream = re.search(r"Stream #0:0.*?: Audio: .*?(\d+) Hz.*?(?:(\d+) kb/s)?$", info, re.M)
    assert stream, info
    return int(stream.group(1)), int(stream.group(2)) if stream.group(2) else None
