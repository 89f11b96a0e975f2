"""Response formats of /v1/audio/speech: pcm and wav written here, the rest through ffmpeg.

The compressed formats are encoded incrementally by one ffmpeg process per response (the
binary shipped by ``imageio-ffmpeg``): PCM goes in on stdin while encoded bytes are read from
stdout at the same time, so the first bytes leave while the engine is still speaking.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from dataclasses import dataclass

from streams.audio import PcmFormat, wav_header

OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
# OpenAI documents its raw pcm as 24 kHz: an unchanged OpenAI client assumes that rate.
OPENAI_PCM_RATE = 24000


@dataclass(frozen=True)
class Codec:
    content_type: str
    muxer: str
    encoder: str
    # streaming_quality -> ffmpeg arguments for the encoder
    quality_args: dict[str, tuple[str, ...]]
    muxer_args: tuple[str, ...] = ()


CODECS: dict[str, Codec] = {
    "mp3": Codec(
        "audio/mpeg",
        "mp3",
        "libmp3lame",
        {"fast": ("-b:a", "64k"), "balanced": ("-b:a", "128k"), "high": ("-b:a", "192k")},
    ),
    "opus": Codec(
        "audio/ogg; codecs=opus",
        "ogg",
        "libopus",
        {"fast": ("-b:a", "32k"), "balanced": ("-b:a", "64k"), "high": ("-b:a", "128k")},
        # One Ogg page per 20 ms frame instead of one per second: bytes leave as they come.
        muxer_args=("-frame_duration", "20", "-page_duration", "20000"),
    ),
    "aac": Codec(
        "audio/aac",
        "adts",
        "aac",
        {"fast": ("-b:a", "64k"), "balanced": ("-b:a", "128k"), "high": ("-b:a", "192k")},
    ),
    "flac": Codec(
        "audio/flac",
        "flac",
        "flac",
        {
            "fast": ("-compression_level", "0"),
            "balanced": ("-compression_level", "5"),
            "high": ("-compression_level", "8"),
        },
    ),
}
CONTENT_TYPES = {"pcm": "audio/pcm", "wav": "audio/wav"} | {
    name: codec.content_type for name, codec in CODECS.items()
}


class EncoderError(RuntimeError):
    pass


def output_rate(response_format: str, requested: int | None, *, sse: bool) -> int | None:
    """The PCM rate to synthesize at for a format (None: the engine's own).

    Raw formats without a header default to OpenAI's 24 kHz (an unchanged OpenAI client
    assumes it); the compressed ones too, which also fixes ffmpeg's input rate before the
    engine is known, so ffmpeg can start while the engine does. wav and the seed's SSE
    describe their rate, so they keep the engine's.
    """
    if response_format == "opus":
        # libopus takes only these rates: the nearest one.
        wanted = requested or OPENAI_PCM_RATE
        return min(OPUS_RATES, key=lambda rate: (abs(rate - wanted), -rate))
    if response_format in CODECS or (response_format == "pcm" and not sse):
        return requested or OPENAI_PCM_RATE
    return requested


def streamed_wav_header(sample_rate: int) -> bytes:
    return wav_header(PcmFormat(sample_rate_hz=sample_rate), None)


@functools.cache
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_command(response_format: str, sample_rate: int, quality: str) -> list[str]:
    codec = CODECS[response_format]
    return [
        ffmpeg_exe(),
        *("-hide_banner", "-nostats", "-loglevel", "error"),
        *("-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"),
        *("-c:a", codec.encoder, *codec.quality_args[quality], *codec.muxer_args),
        # Each packet is written out as soon as it is muxed, not when a buffer fills.
        *("-flush_packets", "1", "-f", codec.muxer, "pipe:1"),
    ]


async def spawn(response_format: str, sample_rate: int, quality: str) -> Process:
    """Start the encoder; started early, it is ready by the time the first audio is."""
    return await asyncio.create_subprocess_exec(
        *ffmpeg_command(response_format, sample_rate, quality),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop(process: Process) -> None:
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(BaseException):
            await process.wait()


async def encode(pcm: AsyncIterator[bytes], process: Process, name: str) -> AsyncIterator[bytes]:
    """``pcm`` fed to a ``spawn``ed ffmpeg, its output yielded as it comes out.

    A writer task feeds stdin while this generator reads stdout, so neither pipe can fill up
    and stall the other. Closing the generator stops the writer (and through it ``pcm``) and
    kills ffmpeg.
    """
    stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
    assert stdin is not None and stdout is not None and stderr is not None

    async def write_all() -> None:
        async with contextlib.aclosing(pcm):
            try:
                async for data in pcm:
                    stdin.write(data)
                    await stdin.drain()
            finally:
                with contextlib.suppress(OSError):
                    stdin.close()

    writer = asyncio.get_running_loop().create_task(write_all())
    try:
        while data := await stdout.read(1 << 16):
            yield data
        await writer  # the input's own failure (an engine error) wins over ffmpeg's
        if await process.wait() != 0:
            message = (await stderr.read()).decode("utf-8", "replace").strip()
            raise EncoderError(f"ffmpeg ({name}) failed: {message[-400:]}")
    finally:
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
        await stop(process)
