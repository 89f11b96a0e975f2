"""Response formats of /v1/audio/speech: pcm and wav written here, the rest through ffmpeg.

The compressed formats are encoded incrementally by one ffmpeg process per response (the
binary shipped by ``imageio-ffmpeg``): PCM goes in on stdin while encoded bytes are read from
stdout at the same time, so the first bytes leave while the engine is still speaking.

FLAC is the exception: its header (STREAMINFO) holds the total sample count and the audio's
MD5, known only at the end. Streamed, they are 0 ("unknown", legal) and libsndfile (Python's
soundfile, Sonic Visualiser...) then cannot read the file at all: it takes the length as
2**63-1 frames. So ffmpeg writes FLAC to a temporary file, which it can seek back into to
complete the header (sample count, MD5, frame sizes), and the file is sent when it is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import weakref
from asyncio.subprocess import Process
from collections.abc import AsyncIterator
from dataclasses import dataclass

from streams.audio import PcmFormat, wav_header

# The sample rates each encoder takes (within 8-48 kHz). Given another, ffmpeg would pick one
# itself (12345 Hz comes out at 12000 in mp3), so the rate is snapped first and reported.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# OpenAI documents its raw pcm as 24 kHz: an unchanged OpenAI client assumes that rate.
OPENAI_PCM_RATE = 24000


@dataclass(frozen=True)
class Codec:
    content_type: str
    muxer: str
    encoder: str
    rates: tuple[int, ...] | None  # None: any rate
    # streaming_quality -> target bitrate in kbit/s (lossy) ...
    bitrates: dict[str, int] | None = None
    # ... or -> compression level (flac)
    levels: dict[str, int] | None = None
    muxer_args: tuple[str, ...] = ()


CODECS: dict[str, Codec] = {
    "mp3": Codec(
        "audio/mpeg",
        "mp3",
        "libmp3lame",
        MP3_RATES,
        bitrates={"fast": 64, "balanced": 128, "high": 192},
    ),
    "opus": Codec(
        "audio/ogg; codecs=opus",
        "ogg",
        "libopus",
        OPUS_RATES,
        bitrates={"fast": 32, "balanced": 64, "high": 128},
        # One Ogg page per 20 ms frame instead of one per second: bytes leave as they come.
        muxer_args=("-frame_duration", "20", "-page_duration", "20000"),
    ),
    "aac": Codec(
        "audio/aac",
        "adts",
        "aac",
        AAC_RATES,
        bitrates={"fast": 64, "balanced": 128, "high": 192},
    ),
    "flac": Codec("audio/flac", "flac", "flac", None, levels={"fast": 0, "balanced": 5, "high": 8}),
}


def max_bitrate_kbps(response_format: str, sample_rate: int) -> int | None:
    """The highest bitrate the encoder really produces for mono at ``sample_rate``."""
    if response_format == "mp3":
        # LAME: MPEG-1 (32-48 kHz) up to 320, MPEG-2 (16-24 kHz) 160, MPEG-2.5 (8-12 kHz) 64.
        return 320 if sample_rate >= 32000 else 160 if sample_rate >= 16000 else 64
    if response_format == "aac":
        # ffmpeg's aac clamps each 1024-sample frame to 6144 bits per channel.
        return 6144 * sample_rate // 1024 // 1000
    if response_format == "opus":
        return 256  # libopus, one channel
    return None


def bitrate_kbps(response_format: str, sample_rate: int, quality: str) -> int | None:
    """The bitrate asked of the encoder: the quality's target, capped at what it can do
    at this rate (so X-Bitrate is what the stream has). None for lossless formats."""
    codec = CODECS.get(response_format)
    if codec is None or codec.bitrates is None:
        return None
    wanted = codec.bitrates[quality]
    cap = max_bitrate_kbps(response_format, sample_rate)
    return min(wanted, cap) if cap is not None else wanted


CONTENT_TYPES = {"pcm": "audio/pcm", "wav": "audio/wav"} | {
    name: codec.content_type for name, codec in CODECS.items()
}


class EncoderError(RuntimeError):
    pass


def output_rate(response_format: str, requested: int | None) -> int | None:
    """The PCM rate to synthesize at for a format (None: the engine's own).

    Raw PCM defaults to OpenAI's 24 kHz whatever the transport: an unchanged OpenAI client
    plays SSE deltas as 24 kHz too and ignores our `speech.audio.info` (Pipecat, the SDK's
    helpers). The compressed formats too, which also fixes ffmpeg's input rate before the
    engine is known, so ffmpeg can start while the engine does. wav describes its rate, so it
    keeps the engine's.
    """
    codec = CODECS.get(response_format)
    if codec is not None and codec.rates is not None:
        # The encoder takes only these rates: the nearest one (the higher on a tie).
        wanted = requested or OPENAI_PCM_RATE
        return min(codec.rates, key=lambda rate: (abs(rate - wanted), -rate))
    if codec is not None or response_format == "pcm":
        return requested or OPENAI_PCM_RATE
    return requested


def streamed_wav_header(sample_rate: int) -> bytes:
    return wav_header(PcmFormat(sample_rate_hz=sample_rate), None)


@functools.cache
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def ffmpeg_command(
    response_format: str, sample_rate: int, quality: str, output: str = "pipe:1"
) -> list[str]:
    """The encoder's command line: s16le mono PCM at ``sample_rate`` Hz on stdin, the format
    written to ``output`` (stdout, or a file path: overwritten)."""
    codec = CODECS[response_format]
    kbps = bitrate_kbps(response_format, sample_rate, quality)
    if kbps is not None:
        quality_args: tuple[str, ...] = ("-b:a", f"{kbps}k")
    else:
        assert codec.levels is not None
        quality_args = ("-compression_level", str(codec.levels[quality]))
    return [
        ffmpeg_exe(),
        *("-hide_banner", "-nostats", "-loglevel", "error"),
        *("-f", "s16le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0"),
        # -ar again for the output: the encoder gets exactly the input's (supported) rate.
        *("-c:a", codec.encoder, "-ar", str(sample_rate), *quality_args, *codec.muxer_args),
        # Each packet is written out as soon as it is muxed, not when a buffer fills.
        *("-flush_packets", "1", "-f", codec.muxer),
        *(("pipe:1",) if output == "pipe:1" else ("-y", output)),
    ]


# Formats whose header is only complete once the whole stream is known (see the module doc).
WHOLE_FILE_FORMATS = frozenset({"flac"})
# The temporary file each such encoder writes, removed by ``stop``.
_OUTPUT_FILES: weakref.WeakKeyDictionary[Process, str] = weakref.WeakKeyDictionary()
SEND_PIECE = 1 << 16


async def spawn(response_format: str, sample_rate: int, quality: str) -> Process:
    """Start the encoder; started early, it is ready by the time the first audio is.

    FLAC is written to a temporary file (see the module doc); ``stop`` removes it."""
    output = "pipe:1"
    if response_format in WHOLE_FILE_FORMATS:
        fd, output = tempfile.mkstemp(prefix="parley-", suffix=f".{response_format}")
        os.close(fd)
    try:
        process = await asyncio.create_subprocess_exec(
            *ffmpeg_command(response_format, sample_rate, quality, output),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except BaseException:
        _remove(None if output == "pipe:1" else output)
        raise
    if output != "pipe:1":
        _OUTPUT_FILES[process] = output
    return process


def _remove(path: str | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


async def stop(process: Process) -> None:
    """Kill the encoder if it still runs and remove its temporary file, if any."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(BaseException):
            await process.wait()
    _remove(_OUTPUT_FILES.pop(process, None))


async def encode(pcm: AsyncIterator[bytes], process: Process, name: str) -> AsyncIterator[bytes]:
    """``pcm`` fed to a ``spawn``ed ffmpeg, its output yielded as it comes out.

    A writer task feeds stdin while this generator reads stdout, so neither pipe can fill up
    and stall the other. Closing the generator stops the writer (and through it ``pcm``) and
    kills ffmpeg. FLAC comes out whole at the end, in 64 KiB pieces, its header complete.
    Raises EncoderError if ffmpeg fails.
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
        while data := await stdout.read(SEND_PIECE):
            yield data
        await writer  # the input's own failure (an engine error) wins over ffmpeg's
        if await process.wait() != 0:
            message = (await stderr.read()).decode("utf-8", "replace").strip()
            raise EncoderError(f"ffmpeg ({name}) failed: {message[-400:]}")
        if (path := _OUTPUT_FILES.get(process)) is not None:
            with open(path, "rb") as file:  # noqa: ASYNC230 - a local file just written
                while data := file.read(SEND_PIECE):
                    yield data
    finally:
        if not writer.done():
            writer.cancel()
            with contextlib.suppress(BaseException):
                await writer
        await stop(process)
