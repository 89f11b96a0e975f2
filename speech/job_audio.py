"""The audio of each speech job, kept on disk (bounded) so the admin and the API can play it.

Every synthesis is a SpeechJob record; this keeps what it produced as a WAV file
(``<PARLEY_SPEECH_AUDIO_DIR>/<job id>.wav``, PCM16 mono at the job's output rate, what the
engine produced after resampling, before any codec), served with byte ranges at
``GET /v1/audio/speech/jobs/{id}/audio.wav``. The stdlib ``wave`` writer appends frames as they
are produced and fixes the header's sizes when the job ends, whatever its status: a cancelled
job keeps the audio it had made.

Bounded: a job's file stops growing at ``PARLEY_SPEECH_AUDIO_MAX_JOB_BYTES``, and when a job
ends the oldest files are deleted until the folder holds at most
``PARLEY_SPEECH_AUDIO_MAX_BYTES`` (0 turns keeping off). Files are named by job id, so any
worker sharing the folder serves any job's audio.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
import wave
from pathlib import Path

from django.conf import settings

logger = logging.getLogger(__name__)

__all__ = ["JobAudio", "job_audio_path", "open_job_audio", "prune"]


def _folder() -> Path:
    return Path(settings.PARLEY_SPEECH_AUDIO_DIR)


def job_audio_path(job_id: uuid.UUID | str) -> Path | None:
    """The finished WAV of ``job_id`` if it is kept (None: never kept, pruned, or running)."""
    try:
        name = uuid.UUID(str(job_id)).hex
    except ValueError:
        return None
    path = _folder() / f"{name}.wav"
    return path if path.is_file() else None


class JobAudio:
    """One job's WAV being written; ``write`` as PCM is produced, ``close`` when it ends."""

    def __init__(self, job_id: uuid.UUID, sample_rate: int) -> None:
        folder = _folder()
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"{job_id.hex}.wav"
        self._part = folder / f".{job_id.hex}.wav.part"  # hidden until whole
        self._wav: wave.Wave_write | None = wave.open(str(self._part), "wb")  # noqa: SIM115
        self._wav.setnchannels(1)
        self._wav.setsampwidth(2)
        self._wav.setframerate(sample_rate)
        self._room = int(settings.PARLEY_SPEECH_AUDIO_MAX_JOB_BYTES)

    def write(self, pcm: bytes) -> None:
        """Append PCM16LE mono bytes (a whole number of samples); beyond the cap, dropped."""
        if self._wav is None or not pcm:
            return
        piece = pcm[: max(0, self._room - self._room % 2)]
        if not piece:
            return
        try:
            self._wav.writeframesraw(piece)
            self._room -= len(piece)
        except OSError as error:  # a full disk must not fail the synthesis itself
            logger.warning("speech job audio %s not kept: %s", self.path.name, error)
            self._abandon()

    def close(self) -> None:
        """Fix the header, publish the file under its job id, then keep the folder bounded."""
        if self._wav is None:
            return
        try:
            self._wav.close()  # writes the real RIFF and data sizes
            self._wav = None
            os.replace(self._part, self.path)
        except OSError as error:
            logger.warning("speech job audio %s not kept: %s", self.path.name, error)
            self._abandon()
            return
        prune()

    def _abandon(self) -> None:
        wav, self._wav = self._wav, None
        with contextlib.suppress(Exception):
            if wav is not None:
                wav.close()
        with contextlib.suppress(OSError):
            self._part.unlink()


def open_job_audio(job_id: uuid.UUID, sample_rate: int) -> JobAudio | None:
    """A writer for the job's audio, or None when keeping is off or the folder is unusable."""
    if int(settings.PARLEY_SPEECH_AUDIO_MAX_BYTES) <= 0:
        return None
    try:
        return JobAudio(job_id, sample_rate)
    except OSError as error:
        logger.warning("speech job audio not kept: %s", error)
        return None


def prune() -> int:
    """Delete the oldest kept WAVs until the folder is within PARLEY_SPEECH_AUDIO_MAX_BYTES.

    Returns how many files were deleted. Files another worker deletes at the same time are
    skipped; a ``.part`` file (a job still running) is never touched.
    """
    limit = int(settings.PARLEY_SPEECH_AUDIO_MAX_BYTES)
    files: list[tuple[int, int, Path]] = []
    try:
        with os.scandir(_folder()) as entries:
            for entry in entries:
                if entry.name.endswith(".wav") and not entry.name.startswith("."):
                    with contextlib.suppress(OSError):
                        stat = entry.stat()
                        files.append((stat.st_mtime_ns, stat.st_size, Path(entry.path)))
    except OSError:
        return 0
    total = sum(size for _, size, _ in files)
    deleted = 0
    for _, size, path in sorted(files):
        if total <= limit:
            break
        with contextlib.suppress(OSError):
            path.unlink()
            deleted += 1
        total -= size
    return deleted
