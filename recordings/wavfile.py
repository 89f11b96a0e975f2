"""Building a recording's WAV file from its chunks: raw PCM as is, containers through ffmpeg.

No Django here: callers pass the chunk bytes (an iterable, so an hour of audio is never held
in memory at once) and the destination. Files are written beside the destination and
renamed into place, so a reader never sees half a file and two builders cannot mix theirs.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import tempfile
import wave
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from recordings.formats import DECODED_BYTES_PER_SAMPLE, RecordingFormat
from streams.audio import WAV_HEADER_BYTES, PcmFormat, wav_header

COPY_BLOCK = 256 * 1024
# ffmpeg is given this long per decode; an hour of Opus decodes in seconds.
DECODE_TIMEOUT_S = 600.0


class DecodeError(RuntimeError):
    """ffmpeg could not turn the chunks into audio; the message says why."""


@dataclass(frozen=True, slots=True)
class WavInfo:
    fmt: PcmFormat
    data_bytes: int

    @property
    def file_bytes(self) -> int:
        return WAV_HEADER_BYTES + self.data_bytes

    @property
    def duration_ms(self) -> int:
        return round(self.fmt.duration_s(self.data_bytes) * 1000)


def ffmpeg_binary() -> str:
    """The ffmpeg shipped by the imageio-ffmpeg wheel (no ffprobe needed: we name the demuxer)."""
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@contextlib.contextmanager
def _replacing(path: Path) -> Iterator[Path]:
    """A temporary file beside `path`, moved over it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield temp
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_pcm_wav(pieces: Iterable[bytes], fmt: PcmFormat, path: Path) -> WavInfo:
    """Raw PCM chunks, in order, under a header with the real sizes."""
    with _replacing(path) as temp, open(temp, "wb") as out:
        out.write(wav_header(fmt, 0))
        size = 0
        for piece in pieces:
            out.write(piece)
            size += len(piece)
        out.seek(0)
        out.write(wav_header(fmt, size))
        out.flush()
        os.fsync(out.fileno())
    return WavInfo(fmt=fmt, data_bytes=size)


def _decode_command(fmt: RecordingFormat, max_s: float, output: Path) -> list[str]:
    command = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error", "-y"]
    command += ["-f", fmt.demuxer, "-i", "pipe:0", "-vn", "-map_metadata", "-1"]
    command += ["-t", f"{max_s:g}", "-acodec", "pcm_s16le"]
    if fmt.decode_rate_hz:
        command += ["-ar", str(fmt.decode_rate_hz)]
    if fmt.decode_channels:
        command += ["-ac", str(fmt.decode_channels)]
    return [*command, "-f", "wav", str(output)]


def decode_to_wav(
    pieces: Iterable[bytes], fmt: RecordingFormat, path: Path, *, max_s: float
) -> WavInfo:
    """Feed the encoded chunks to ffmpeg and save what it decodes (at most `max_s` seconds)."""
    with tempfile.TemporaryDirectory(prefix="parley-decode-") as work:
        decoded = Path(work) / "decoded.wav"
        errors_path = Path(work) / "stderr.txt"
        with open(errors_path, "wb") as errors:
            process = subprocess.Popen(
                _decode_command(fmt, max_s, decoded),
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=errors,
            )
            assert process.stdin is not None
            try:
                for piece in pieces:
                    process.stdin.write(piece)
                process.stdin.close()
            except BrokenPipeError:
                pass  # ffmpeg gave up on the input; its exit status and stderr say why
            try:
                code = process.wait(DECODE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise DecodeError(f"ffmpeg took longer than {DECODE_TIMEOUT_S:g} s") from None
        message = errors_path.read_text(errors="replace").strip()
        if code != 0:
            raise DecodeError(message.splitlines()[-1] if message else f"ffmpeg exited {code}")
        try:
            return _rewrap(decoded, path)
        except (wave.Error, EOFError, OSError) as exc:
            raise DecodeError(f"ffmpeg produced no readable audio: {exc}") from exc


def _rewrap(decoded: Path, path: Path) -> WavInfo:
    """ffmpeg's WAV (which may carry extra chunks) as our plain 44-byte-header file."""
    with wave.open(str(decoded), "rb") as source:
        if source.getsampwidth() != DECODED_BYTES_PER_SAMPLE:
            raise DecodeError(f"unexpected sample width {source.getsampwidth()}")
        fmt = PcmFormat(
            sample_rate_hz=source.getframerate(),
            channels=source.getnchannels(),
            bytes_per_sample=source.getsampwidth(),
        )
        if source.getnframes() == 0:
            raise DecodeError("the recording decoded to no audio at all")
        frames_per_block = max(1, COPY_BLOCK // fmt.frame_bytes)
        return write_pcm_wav(_frames(source, frames_per_block), fmt, path)


def _frames(source: wave.Wave_read, frames_per_block: int) -> Iterator[bytes]:
    while block := source.readframes(frames_per_block):
        yield block
