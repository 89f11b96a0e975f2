"""Live decoding of an encoded recording for its room. No Django here.

One long-lived ffmpeg per session: the container bytes go to its stdin as they are stored,
in order, and it writes 16-bit PCM at a fixed rate (RecordingFormat.live_pcm) to stdout as
soon as it has decoded it. A reader task hands that PCM, in whole frames and in order, to
`publish` (which makes it the room's audio_chunk events). Nothing here blocks the loop:
asyncio's subprocess pipes carry both directions.

The decoder is best effort beside the recording: if ffmpeg gives up (bytes that are not the
declared container) `fail` is called once and later bytes are not fed; the stored chunks and
the saved file do not depend on it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import weakref
from collections.abc import Awaitable, Callable

from recordings.formats import RecordingFormat
from recordings.wavfile import ffmpeg_binary
from streams.audio import PcmFormat

logger = logging.getLogger(__name__)

PublishFn = Callable[[bytes], Awaitable[None]]
FailFn = Callable[[str], Awaitable[None]]

# Largest PCM piece published as one event (about 0.7 s at 48 kHz mono 16-bit). Smaller
# pieces go out as soon as they are decoded; while one is being written, the next gathers.
READ_BYTES = 64 * 1024
# Container bytes queued for ffmpeg before a feed waits for it: far above anything a live
# client sends between two decodes, so the recording's acknowledgements never wait on it.
FEED_HIGH_WATER = 4 * 1024 * 1024
# How long a flush waits for ffmpeg to decode and the tail to be published.
FINISH_TIMEOUT_S = 15.0
STDERR_KEEP = 2000

# Every running decoder of this process, killed at interpreter exit (a worker shutting down).
_running: weakref.WeakSet[LiveDecoder] = weakref.WeakSet()


def live_command(fmt: RecordingFormat, pcm: PcmFormat, *, max_s: float) -> list[str]:
    command = [ffmpeg_binary(), "-hide_banner", "-loglevel", "error"]
    # No probing: the demuxer is named and the codec parameters are in the container header,
    # so output starts with the first packet (about 20 ms after the first webm bytes).
    # (-fflags nobuffer was measured to drop audio: not used.)
    command += ["-probesize", "32", "-analyzeduration", "0"]
    command += ["-f", fmt.demuxer, "-i", "pipe:0", "-vn", "-map_metadata", "-1"]
    command += ["-t", f"{max_s:g}", "-acodec", "pcm_s16le"]
    command += ["-ar", str(pcm.sample_rate_hz), "-ac", str(pcm.channels)]
    # Raw PCM out, flushed after every packet so a pipe buffer never holds audio back.
    return [*command, "-flush_packets", "1", "-f", "s16le", "pipe:1"]


class LiveDecoder:
    def __init__(
        self, *, command: list[str], frame_bytes: int, publish: PublishFn, fail: FailFn
    ) -> None:
        self.command = command
        self.frame_bytes = frame_bytes
        self._publish = publish
        self._fail = fail
        self.process: asyncio.subprocess.Process | None = None
        self.failed = False
        self.fed_bytes = 0
        self.published_bytes = 0
        self._closing = False
        self._reader: asyncio.Task | None = None
        self._stderr_reader: asyncio.Task | None = None
        self._stderr = bytearray()
        self._finishing: asyncio.Future | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert self.process.stdin is not None
        self.process.stdin.transport.set_write_buffer_limits(high=FEED_HIGH_WATER)
        _running.add(self)
        loop = asyncio.get_running_loop()
        self._stderr_reader = loop.create_task(self._read_stderr())
        self._reader = loop.create_task(self._read_pcm())

    @property
    def accepting(self) -> bool:
        process = self.process
        return (
            process is not None
            and process.returncode is None
            and not self.failed
            and not self._closing
        )

    async def feed(self, data: bytes) -> None:
        """Queue the next container bytes (in the order they were stored)."""
        if not self.accepting:
            return
        stdin = self.process.stdin  # type: ignore[union-attr]
        try:
            stdin.write(data)
            self.fed_bytes += len(data)
            await stdin.drain()  # returns at once below FEED_HIGH_WATER
        except (ConnectionError, BrokenPipeError):
            pass  # ffmpeg has exited; the reader reports why

    async def finish(self) -> None:
        """Flush: end ffmpeg's input, publish what it still decodes, reap it. Idempotent, and
        it runs to the end even if the caller is cancelled (a client leaving mid-stop)."""
        if self._finishing is None:
            self._finishing = asyncio.ensure_future(self._finish())
        await asyncio.shield(self._finishing)

    async def _finish(self) -> None:
        process = self.process
        if process is None:
            return
        self._closing = True
        assert process.stdin is not None
        with contextlib.suppress(ConnectionError, BrokenPipeError):
            process.stdin.close()
            await process.stdin.wait_closed()
        try:
            if self._reader is not None:
                await asyncio.wait_for(asyncio.shield(self._reader), FINISH_TIMEOUT_S)
        except TimeoutError:
            logger.warning("live decoder: ffmpeg did not finish in %g s", FINISH_TIMEOUT_S)
        finally:
            self.kill()
            await process.wait()

    def kill(self) -> None:
        """Stop at once (no flush): the process and both readers."""
        self._closing = True
        _running.discard(self)
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        for task in (self._reader, self._stderr_reader):
            if task is not None and not task.done() and task is not asyncio.current_task():
                task.cancel()

    async def _read_pcm(self) -> None:
        process = self.process
        assert process is not None and process.stdout is not None
        pending = b""
        while block := await process.stdout.read(READ_BYTES):
            pending += block
            whole = len(pending) - len(pending) % self.frame_bytes
            if whole:
                piece, pending = pending[:whole], pending[whole:]
                await self._publish_one(piece)
        code = await process.wait()
        if self._stderr_reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._stderr_reader
        if code != 0 and not self._killed_by_us(code):
            lines = self._stderr.decode(errors="replace").strip().splitlines()
            await self._report(lines[-1] if lines else f"ffmpeg exited {code}")

    def _killed_by_us(self, code: int) -> bool:
        # A flush that timed out kills ffmpeg (SIGKILL: -9); that is not the audio's fault.
        return code < 0 and self._closing

    async def _publish_one(self, piece: bytes) -> None:
        try:
            await self._publish(piece)
            self.published_bytes += len(piece)
        except Exception:
            # One lost piece of the live broadcast; the recording itself is unaffected.
            logger.exception("live decoder: publishing %d bytes failed", len(piece))

    async def _report(self, reason: str) -> None:
        if self.failed:
            return
        self.failed = True
        try:
            await self._fail(reason)
        except Exception:
            logger.exception("live decoder: reporting a failure failed")

    async def _read_stderr(self) -> None:
        # Drained all along: ffmpeg would block on a full stderr pipe.
        process = self.process
        assert process is not None and process.stderr is not None
        while block := await process.stderr.read(4096):
            self._stderr += block
            del self._stderr[:-STDERR_KEEP]


@atexit.register
def _kill_all() -> None:
    for decoder in list(_running):
        process = decoder.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
