"""Response formats of /v1/audio/speech: pcm and wav written here, the rest by an encoder.

The compressed formats are encoded incrementally, so the first bytes leave while the engine
is still speaking. Two encoders make the same streams (same muxer, codec, rate, bitrate or
compression level, one packet written out at a time):

- ``pyav`` (the default): libav in this process through PyAV (the ``av`` wheel, which
  faster-whisper brings too). Opening it costs well under a millisecond, not a process start;
  each chunk is encoded in a small thread pool (libav releases the GIL while it encodes), so
  a slow encoder (ffmpeg's aac runs ~25x real time) never holds up the event loop.
- ``ffmpeg``: one ffmpeg process per response (the binary shipped by ``imageio-ffmpeg``), PCM
  on stdin while encoded bytes are read from stdout at the same time. It costs 15-30 ms to
  start, hidden only when the engine's first chunk takes longer.

``PARLEY_SPEECH_ENCODER=ffmpeg`` selects the process (read when an encoder is made); anything
else, or nothing, PyAV. ``bench/tts.py`` measures both in one run (docs/benchmarks.md).

FLAC is the exception to streaming: its header (STREAMINFO) holds the total sample count and
the audio's MD5, known only at the end. Streamed, they are 0 ("unknown", legal) and libsndfile
(Python's soundfile, Sonic Visualiser...) then cannot read the file at all: it takes the
length as 2**63-1 frames. So FLAC is written to a temporary file, which the muxer seeks back
into to complete the header (sample count, MD5, frame sizes), and the file is sent when it
is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import tempfile
import threading
import weakref
from asyncio.subprocess import Process
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import IO, Any

# Imported here, not on first use: the import takes ~0.1 s, which the first response would pay.
import av
import numpy as np

from streams.audio import PcmFormat, wav_header

# The sample rates each encoder takes (within 8-48 kHz). Given another, ffmpeg would pick one
# itself (12345 Hz comes out at 12000 in mp3), so the rate is snapped first and reported.
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)
MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
AAC_RATES = (7350, 8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
# OpenAI documents its raw pcm as 24 kHz: an unchanged OpenAI client assumes that rate.
OPENAI_PCM_RATE = 24000

ENCODER_SETTING = "PARLEY_SPEECH_ENCODER"
ENCODERS = ("pyav", "ffmpeg")


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
    # libav options of the encoder and of the muxer (ffmpeg: ``-name value`` each).
    codec_options: dict[str, str] = field(default_factory=dict)
    muxer_options: dict[str, str] = field(default_factory=dict)

    @property
    def muxer_args(self) -> tuple[str, ...]:
        options = {**self.codec_options, **self.muxer_options}
        return tuple(arg for name, value in options.items() for arg in (f"-{name}", value))


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
        codec_options={"frame_duration": "20"},
        muxer_options={"page_duration": "20000"},
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
    helpers). The compressed formats too, which also fixes the encoder's input rate before
    the engine is known, so the encoder can start while the engine does. wav describes its
    rate, so it keeps the engine's.
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


def encoder_name() -> str:
    """The encoder new responses get: ``PARLEY_SPEECH_ENCODER`` (``pyav`` unless ``ffmpeg``)."""
    return "ffmpeg" if os.environ.get(ENCODER_SETTING, "").strip().lower() == "ffmpeg" else "pyav"


# Formats whose header is only complete once the whole stream is known (see the module doc).
WHOLE_FILE_FORMATS = frozenset({"flac"})
SEND_PIECE = 1 << 16


# --- PyAV -------------------------------------------------------------------------------------

# Bulk encoding runs here, so the event loop only waits for it. Each encoder uses one thread
# at a time; eight cover more concurrent responses than two cores can feed.
_ENCODE_NICENESS = 5


def _lower_priority() -> None:
    """Bulk encoding is throughput work: under contention the engine and the event loop
    (every response's first bytes) come first. Nice +5 still leaves these threads a quarter
    of a contended core, 3x real time for the slowest encoder (aac). Linux niceness is per
    thread; elsewhere, or when not permitted, nothing changes."""
    with contextlib.suppress(AttributeError, OSError):
        tid = threading.get_native_id()
        os.setpriority(
            os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + _ENCODE_NICENESS
        )


_ENCODE_THREADS = ThreadPoolExecutor(
    8, thread_name_prefix="parley-encoder", initializer=_lower_priority
)


class _Sink:
    """What the muxer writes to: collected until taken. No ``seek``: libav then treats it as
    a pipe, exactly as ffmpeg's stdout (e.g. no Xing header in mp3, as before)."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class AVEncoder:
    """One response's encoder in this process: s16le mono PCM at ``sample_rate`` Hz in,
    the format's bytes out. Not thread-safe; ``encode`` calls it from one thread at a time.

    Raises EncoderError when libav refuses the setup or the audio."""

    def __init__(self, response_format: str, sample_rate: int, quality: str) -> None:
        codec = CODECS[response_format]
        self.response_format = response_format
        self.sample_rate = sample_rate
        self.file: IO[bytes] | None = None
        self._sink = _Sink()
        if response_format in WHOLE_FILE_FORMATS:
            # Seekable, so the muxer completes the header; on disk, so memory stays flat.
            self.file = tempfile.TemporaryFile(  # noqa: SIM115 - closed by close()
                prefix="parley-", suffix=f".{response_format}"
            )
        self._pts = 0
        self._odd = b""  # half a sample left over from the previous piece
        self._closed = False
        # ``close`` may come from the loop (``stop``, a response torn down) while a thread is
        # still inside libav with this encoder: it is then left to that call to close.
        self._state = threading.Lock()
        self._busy = False
        self._close_wanted = False
        options = dict(codec.codec_options)
        if codec.levels is not None:
            options["compression_level"] = str(codec.levels[quality])
        try:
            self._container = av.open(
                self.file if self.file is not None else self._sink,
                mode="w",
                format=codec.muxer,
                # Each packet is written out as soon as it is muxed, not when a buffer fills.
                container_options={"flush_packets": "1", **codec.muxer_options},
            )
            self._stream = self._container.add_stream(
                codec.encoder, rate=sample_rate, options=options
            )
            self._stream.codec_context.layout = "mono"
            kbps = bitrate_kbps(response_format, sample_rate, quality)
            if kbps is not None:
                self._stream.codec_context.bit_rate = kbps * 1000
            # Opens the codec and writes the header now, before the first audio arrives.
            self._container.start_encoding()
        except Exception as error:
            self.close()
            raise EncoderError(f"libav ({response_format}) failed to start: {error}") from error

    @contextlib.contextmanager
    def _using(self) -> Iterator[None]:
        with self._state:
            if self._closed or self._close_wanted:
                raise EncoderError(f"the {self.response_format} encoder is closed")
            self._busy = True
        try:
            yield
        finally:
            with self._state:
                self._busy = False
                close = self._close_wanted
            if close:
                self._release()

    def feed(self, pcm: bytes) -> bytes:
        """Encode ``pcm``; returns the bytes that are ready (b"" for a whole-file format)."""
        with self._using():
            return self._feed(pcm)

    def _feed(self, pcm: bytes) -> bytes:
        pcm = self._odd + pcm
        usable = len(pcm) - len(pcm) % 2
        self._odd = pcm[usable:]
        if usable:
            samples = np.frombuffer(pcm, dtype="<i2", count=usable // 2).reshape(1, -1)
            frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
            frame.sample_rate = self.sample_rate
            frame.pts = self._pts
            self._pts += samples.shape[1]
            self._mux(frame)
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder and write the trailer; returns the last bytes (whole-file
        formats: b"", the file is then complete in ``self.file``)."""
        with self._using():
            self._mux(None)
            try:
                self._container.close()
            except Exception as error:
                raise EncoderError(f"libav ({self.response_format}) failed: {error}") from error
            self._closed = True
            return self._sink.take()

    def _mux(self, frame: Any) -> None:
        try:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        except Exception as error:
            raise EncoderError(f"libav ({self.response_format}) failed: {error}") from error

    def close(self) -> None:
        """Release libav's state and the temporary file; idempotent, from any thread. While
        another thread is encoding with it, that call releases it when it returns."""
        with self._state:
            self._close_wanted = True
            if self._busy:
                return
        self._release()

    def _release(self) -> None:
        with self._state:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(Exception):
                    self._container.close()
            if self.file is not None:
                with contextlib.suppress(OSError):
                    self.file.close()


# Audio a PyAV encoder may hold unencoded (seconds): beyond it the engine's stream is not
# pulled (a slow client slows synthesis down instead of filling memory).
_AV_BUFFER_SECONDS = 5.0
# Audio encoded at a time, on the loop, until the first bytes are out.
_AV_HEAD_SECONDS = 0.05


async def _av_encode(pcm: AsyncIterator[bytes], encoder: AVEncoder) -> AsyncIterator[bytes]:
    """A feeder task pulls ``pcm`` as fast as it comes while this generator encodes what has
    arrived, everything at once, in the encoder threads: the engine is never held up by a
    hand-off per chunk (as ffmpeg's stdin pipe never did), and a busy encoder gets larger
    batches. Until the first bytes are out, 50 ms at a time is encoded right here, on the
    loop: handing it to a thread and back costs more than encoding it (well under a ms) when
    the machine is busy."""
    loop = asyncio.get_running_loop()
    limit = int(_AV_BUFFER_SECONDS * encoder.sample_rate) * 2
    head = int(_AV_HEAD_SECONDS * encoder.sample_rate) * 2
    buffered: list[bytes] = []
    size = 0
    arrived = asyncio.Event()  # something in ``buffered``, or the feeder has ended
    room = asyncio.Event()  # ``buffered`` is under the limit
    room.set()

    async def feed() -> None:
        nonlocal size
        try:
            async with contextlib.aclosing(pcm):
                async for data in pcm:
                    buffered.append(data)
                    size += len(data)
                    arrived.set()
                    if size >= limit:
                        room.clear()
                        await room.wait()
        finally:
            arrived.set()

    feeder = loop.create_task(feed())

    def run(function: Any, *args: Any) -> asyncio.Future[Any]:
        return loop.run_in_executor(_ENCODE_THREADS, function, *args)

    # A whole-file format sends nothing before the end: no first bytes to hurry.
    started = encoder.file is not None
    try:
        while True:
            if not buffered:
                if feeder.done():
                    feeder.result()  # the input's own failure (an engine error) is raised
                    break
                arrived.clear()
                await arrived.wait()
                continue
            if not started:
                # A few tens of ms at a time until the first bytes are out (aac needs 85 ms),
                # so they leave as early as they can: the engine's first chunk may hold a
                # second of audio (services coalesces what queued up), 15-30 ms to encode.
                batch = buffered[0][:head]
                if len(batch) == len(buffered[0]):
                    buffered.pop(0)
                else:
                    buffered[0] = buffered[0][head:]
                out = encoder.feed(batch)
                started = bool(out)
            else:
                batch = b"".join(buffered)
                buffered.clear()
                out = await run(encoder.feed, batch)
            size -= len(batch)
            room.set()
            if out:
                yield out
        if out := await run(encoder.finish):
            yield out
        if encoder.file is not None:
            encoder.file.seek(0)
            while data := await run(encoder.file.read, SEND_PIECE):
                yield data
    finally:
        if not feeder.done():
            feeder.cancel()
            with contextlib.suppress(BaseException):
                await feeder
        # Left mid-batch (client gone): the thread still inside libav releases it after.
        encoder.close()


# --- ffmpeg -----------------------------------------------------------------------------------


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


# The temporary file each such encoder writes, removed by ``stop``.
_OUTPUT_FILES: weakref.WeakKeyDictionary[Process, str] = weakref.WeakKeyDictionary()

Encoder = Process | AVEncoder


async def spawn(
    response_format: str, sample_rate: int, quality: str, *, backend: str | None = None
) -> Encoder:
    """Start an encoder (``backend``: "pyav" or "ffmpeg", default ``encoder_name()``);
    started early, it is ready by the time the first audio is. ``stop`` releases it (and a
    FLAC encoder's temporary file, see the module doc) when ``encode`` never runs."""
    if (backend or encoder_name()) == "pyav":
        if response_format in WHOLE_FILE_FORMATS:  # creates a file: not on the loop
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                _ENCODE_THREADS, AVEncoder, response_format, sample_rate, quality
            )
        return AVEncoder(response_format, sample_rate, quality)  # ~1 ms: no hand-off
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


async def stop(encoder: Encoder) -> None:
    """Release the encoder: kill ffmpeg if it still runs, close libav's state, remove the
    temporary file if any."""
    if isinstance(encoder, AVEncoder):
        encoder.close()
        return
    process = encoder
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        with contextlib.suppress(BaseException):
            await process.wait()
    _remove(_OUTPUT_FILES.pop(process, None))


def encode(pcm: AsyncIterator[bytes], encoder: Encoder, name: str) -> AsyncIterator[bytes]:
    """``pcm`` through a ``spawn``ed encoder, its output yielded as it comes out.

    Closing the generator stops the encoder (and through it ``pcm``) and releases it (ffmpeg
    killed). FLAC comes out whole at the end, in 64 KiB pieces, its header complete. Raises
    EncoderError if the encoder fails; an error of ``pcm`` (an engine's) wins over it.
    """
    if isinstance(encoder, AVEncoder):
        return _av_encode(pcm, encoder)
    return _ffmpeg_encode(pcm, encoder, name)


async def _ffmpeg_encode(
    pcm: AsyncIterator[bytes], process: Process, name: str
) -> AsyncIterator[bytes]:
    # A writer task feeds stdin while this generator reads stdout, so neither pipe can fill
    # up and stall the other.
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
