"""A bounded on-disk cache of finished syntheses: the same request is served without synthesis.

Repeated phrases (a game character's lines, an IVR prompt) are synthesized once; later
identical requests get the stored bytes. Two parts:

- ``AudioCache`` (no Django): one file per entry in one directory, written to a temporary
  file and ``os.replace``d into place, so several worker processes share the directory and a
  reader never sees half an entry; it survives restarts. Least recently used first out, by
  bytes: a hit refreshes the entry's mtime, and every store scans the directory and removes
  the oldest entries until the total is at most ``max_bytes``. An entry over
  ``max_entry_bytes`` is never stored.
- The request side (Django): ``slot_for`` decides whether a request is cacheable and builds
  its key; ``start_hit_job`` records a hit as a SpeechJob (``cache="hit"``);
  ``store_when_completed`` stores a miss's bytes once its synthesis completed and
  ``mark_when_recorded`` marks its row ``cache="miss"``. speech.streaming calls them.

Why our own code and not ``diskcache`` (PyPI): its size limit is not a hard bound (culling
removes at most ``cull_limit`` items per write), its least-recently-used policy writes its
SQLite index on every read, and it has had no release since 2023. What we need is ~150
lines over ``os.replace`` and ``os.scandir``.

An entry file: ``MAGIC``, a 4-byte big-endian length, that many bytes of JSON metadata
(``audio_len``, ``crc32`` of the audio, and what the response's headers and job need), then
the audio bytes of the response format. A file that does not check out (truncated by a
crash, another version) is removed and counts as a miss.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import struct
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from speech.library import default_voice_name, stored_voice_named
from speech.models import JobStatus, SpeechJob
from speech.params import KNOB_DEFAULTS
from speech.services import (
    KNOB_EFFECTS,
    LiveJob,
    _start_recording,  # the one recorder every synthesis goes through
    engine_for,
    get_registry,
    voice_check,
)
from speech.tts import OPENAI_VOICE_TO_ESPEAK
from streams.runtime import runtime

logger = logging.getLogger(__name__)

__all__ = [
    "AudioCache",
    "CacheSlot",
    "Entry",
    "PendingEntry",
    "cache_clear",
    "cache_info",
    "from_settings",
    "hit_body",
    "key_of",
    "lookup",
    "mark_when_recorded",
    "settle",
    "slot_for",
    "start_hit_job",
    "store_when_completed",
]

MAGIC = b"PARLEY-TTS-CACHE\n"
# Part of every key: bump when the bytes Parley makes for the same request change (encoder
# settings, WAV header, resampling), so old entries are never served again.
KEY_VERSION = 1
SUFFIX = ".tts"
TMP_PREFIX = ".tmp-"
STALE_TMP_S = 3600.0  # a temporary file this old belongs to a writer that died
_LENGTH = struct.Struct(">I")
# Knobs that change only timing, never the bytes: left out of the key.
_TIMING_KNOBS = frozenset({"streaming_buffer_size"})


@dataclass(frozen=True)
class Entry:
    meta: dict[str, Any]
    audio: bytes


@dataclass(frozen=True)
class Usage:
    entries: int
    bytes: int


class AudioCache:
    """Entries under ``directory``, at most ``max_bytes`` in all (file sizes), none over
    ``max_entry_bytes``. Every method is blocking (files): call it off the event loop. Safe
    to use from several threads and processes at once."""

    def __init__(self, directory: Path | str, *, max_bytes: int, max_entry_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_entry_bytes = min(max_entry_bytes, max_bytes)

    def _path(self, key: str) -> Path:
        if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return self.directory / f"{key}{SUFFIX}"

    def get(self, key: str) -> Entry | None:
        """The entry, or None; a hit makes it the most recently used."""
        path = self._path(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read(self.max_entry_bytes + 1)
        except FileNotFoundError:
            return None
        entry = _decode(data)
        if entry is None:
            logger.warning("tts cache: removing damaged entry %s", path.name)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        with contextlib.suppress(FileNotFoundError):
            os.utime(path)  # least recently used goes first: this one was just used
        return entry

    def put(self, key: str, meta: Mapping[str, Any], audio: bytes) -> bool:
        """Store an entry (atomically replacing one of the same key), then evict down to
        ``max_bytes``. False if the entry is over ``max_entry_bytes`` (nothing stored)."""
        data = _encode(meta, audio)
        if len(data) > self.max_entry_bytes:
            return False
        path = self._path(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{key[:16]}-", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        self.evict()
        return True

    def _scan(self) -> list[tuple[float, int, str]]:
        """(mtime, size, name) of every entry; stale temporary files are removed."""
        found: list[tuple[float, int, str]] = []
        now = time.time()
        try:
            listing = os.scandir(self.directory)
        except FileNotFoundError:
            return found
        with listing:
            for item in listing:
                try:
                    stat = item.stat()
                except FileNotFoundError:  # evicted by another process meanwhile
                    continue
                if item.name.endswith(SUFFIX):
                    found.append((stat.st_mtime, stat.st_size, item.name))
                elif item.name.startswith(TMP_PREFIX) and now - stat.st_mtime > STALE_TMP_S:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(item.path)
        return found

    def evict(self) -> int:
        """Remove least recently used entries until the total is at most ``max_bytes``;
        returns how many were removed."""
        entries = self._scan()
        total = sum(size for _, size, _ in entries)
        removed = 0
        if total <= self.max_bytes:
            return 0
        for _, size, name in sorted(entries):
            if total <= self.max_bytes:
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)
                removed += 1
            total -= size  # gone, by us or by another process
        return removed

    def usage(self) -> Usage:
        entries = self._scan()
        return Usage(entries=len(entries), bytes=sum(size for _, size, _ in entries))

    def clear(self) -> Usage:
        """Remove every entry; returns what was removed."""
        removed = Usage(0, 0)
        for _, size, name in self._scan():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.directory / name)
                removed = Usage(removed.entries + 1, removed.bytes + size)
        return removed


def _encode(meta: Mapping[str, Any], audio: bytes) -> bytes:
    header = json.dumps(
        {**meta, "audio_len": len(audio), "crc32": zlib.crc32(audio)}, separators=(",", ":")
    ).encode()
    return b"".join((MAGIC, _LENGTH.pack(len(header)), header, audio))


def _decode(data: bytes) -> Entry | None:
    start = len(MAGIC) + _LENGTH.size
    if not data.startswith(MAGIC) or len(data) < start:
        return None
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    try:
        meta = json.loads(data[start : start + length])
    except ValueError:
        return None
    audio = data[start + length :]
    if (
        not isinstance(meta, dict)
        or meta.get("audio_len") != len(audio)
        or meta.get("crc32") != zlib.crc32(audio)
    ):
        return None
    return Entry(meta, audio)


def key_of(parts: Mapping[str, Any]) -> str:
    """The key of a request's parts: SHA-256 of their canonical JSON (64 hex digits)."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- the request side (Django) -------------------------------------------------------------


def from_settings() -> AudioCache | None:
    """The configured cache, or None when PARLEY_TTS_CACHE_MAX_BYTES is 0 (disabled)."""
    max_bytes = int(settings.PARLEY_TTS_CACHE_MAX_BYTES)
    if max_bytes <= 0:
        return None
    return AudioCache(
        settings.PARLEY_TTS_CACHE_DIR,
        max_bytes=max_bytes,
        max_entry_bytes=int(settings.PARLEY_TTS_CACHE_MAX_ENTRY_BYTES),
    )


@functools.cache
def _versions() -> dict[str, str]:
    """Versions of the packages whose code makes the audio bytes (engines, encoder, resampler)."""
    found = {}
    for name in ("espeakng-loader", "piper-tts", "onnxruntime", "imageio-ffmpeg", "soxr"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[name] = importlib.metadata.version(name)
    return found


def engine_identity(engine: Any) -> dict[str, Any]:
    """What besides the request decides an engine's output: its class, rate, model files
    (path, size, mtime: a replaced Piper voice is another engine), server and model."""
    identity: dict[str, Any] = {
        "class": f"{type(engine).__module__}.{type(engine).__qualname__}",
        "sample_rate": engine.sample_rate,
        "packages": _versions(),
    }
    for name in ("model_path", "config_path"):
        path = getattr(engine, name, None)
        if isinstance(path, str | os.PathLike):
            try:
                stat = os.stat(path)
                identity[name] = [str(path), stat.st_size, stat.st_mtime_ns]
            except OSError:
                identity[name] = [str(path)]
    for name in ("base_url", "model"):
        value = getattr(engine, name, None)
        if isinstance(value, str):
            identity[name] = value
    return identity


@dataclass(frozen=True)
class CacheSlot:
    """Where one request's audio is (or will be) in the cache."""

    store: AudioCache
    key: str
    engine: str
    engine_voice: str


def _is_sample_voice(voice: str | None) -> bool:
    """Whether `voice` (None: the default voice) is a stored voice with a sample (database)."""

    name = voice if voice is not None else default_voice_name()
    if name is None or name in OPENAI_VOICE_TO_ESPEAK:
        return False
    stored = stored_voice_named(name)
    return stored is not None and bool(stored.sample)


async def slot_for(
    *,
    text: str,
    model: str | None,
    voice: str | None,
    speed: float,
    sample_rate: int | None,
    response_format: str,
    knobs: Mapping[str, Any],
    voice_sample: Any = None,
) -> CacheSlot | None:
    """The cache slot of a request, or None when it is not cached: the cache is off, the
    engine is not in PARLEY_TTS_CACHE_ENGINES, or a voice sample is involved (an uploaded
    ``voice_file`` or a stored sample voice: not cached, see docs/speech.md "Cache").

    ``sample_rate``: the output rate (None: the engine's). ``knobs``: the ones the client
    sent. Raises the ApiError synthesis would for an unknown voice or model.
    """

    store = from_settings()
    if store is None or voice_sample is not None:
        return None
    resolved = await voice_check(voice=voice, model=model)
    registry = get_registry()
    name = resolved["engine"]
    kind = registry.kind_of(name)
    if not {name, kind} & set(settings.PARLEY_TTS_CACHE_ENGINES):
        return None
    if await runtime.run_db(_is_sample_voice, voice):
        return None
    engine = await engine_for(registry, name)
    no_effect = KNOB_EFFECTS.get(kind, {}).get("accepted_without_effect", {})
    parts = {
        "v": KEY_VERSION,
        "engine": name,
        "kind": kind,
        "identity": engine_identity(engine),
        "voice": resolved["voice"],
        "speed": float(speed),
        "sample_rate": sample_rate or engine.sample_rate,
        "knobs": {
            knob: value
            for knob, value in knobs.items()
            if knob not in no_effect and knob not in _TIMING_KNOBS
        },
        "format": response_format,
        "text": text,
    }
    return CacheSlot(store, key_of(parts), name, resolved["voice"])


async def lookup(slot: CacheSlot) -> Entry | None:
    """The slot's entry, or None; a cache that cannot be read is a miss (logged), never an
    error of the request."""
    try:
        return await asyncio.to_thread(slot.store.get, slot.key)
    except OSError:
        logger.exception("tts cache: reading %s failed", slot.key[:16])
        return None


# Background work (stores, row marks): strong references, and a way to wait for them.
_TASKS: set[asyncio.Task] = set()


def _spawn(work: Coroutine[Any, Any, None]) -> None:
    task = asyncio.get_running_loop().create_task(work)
    _TASKS.add(task)
    task.add_done_callback(_TASKS.discard)


async def settle() -> None:
    """Wait for the cache's background stores and row marks (tests, benches)."""
    while _TASKS:
        await asyncio.wait(list(_TASKS))


class PendingEntry:
    """A miss's response bytes, collected as they are sent; dropped once over the cap."""

    def __init__(self, slot: CacheSlot) -> None:
        self.slot = slot
        self.parts: list[bytes] = []
        self.size = 0
        self.too_large = False

    def add(self, data: bytes) -> None:
        if self.too_large:
            return
        self.size += len(data)
        if self.size > self.slot.store.max_entry_bytes:
            self.too_large = True
            self.parts.clear()  # never stored: do not hold the memory
        else:
            self.parts.append(data)


def _mark_row(job_id: Any, value: str) -> None:

    SpeechJob.objects.filter(pk=job_id).update(cache=value)


def mark_when_recorded(job: LiveJob, value: str) -> None:
    """Set the job's row ``cache`` to `value` once its recorder wrote the final state (the
    recorder writes what a LiveJob knows, which is not this). Runs in the background."""

    async def work() -> None:
        await job.recorded.wait()
        try:
            await runtime.run_db(_mark_row, job.id, value)
        except Exception:
            logger.exception("tts cache: marking job %s failed", job.id)

    _spawn(work())


def store_when_completed(job: LiveJob, pending: PendingEntry) -> None:
    """Store a miss's bytes, in the background, if its synthesis completed (not cancelled
    or failed: the caller calls this only when the response ended whole) with the engine and
    voice its key names, and it is not over the per-entry cap."""
    slot = pending.slot
    if (
        job.status != JobStatus.COMPLETED
        or pending.too_large
        or job.engine != slot.engine
        or (job.engine_voice or "") != (slot.engine_voice or "")
        or job.voice_sample_name
    ):
        return
    meta = {
        "engine": job.engine,
        "engine_voice": job.engine_voice,
        "sample_rate": job.sample_rate,
        "engine_sample_rate": job.engine_sample_rate,
        "speed_applied": job.speed_applied,
        "audio_bytes": job.audio_bytes,
        "total_chunks": job.total_chunks,
        "response_format": job.response_format,
        "job_id": str(job.id),
        "stored_at": time.time(),
    }
    audio = b"".join(pending.parts)
    pending.parts.clear()

    async def work() -> None:
        try:
            await asyncio.to_thread(slot.store.put, slot.key, meta, audio)
        except OSError:
            logger.exception("tts cache: storing %s failed", slot.key[:16])

    _spawn(work())


class HitJob(LiveJob):
    """A LiveJob whose row says it was served from the cache."""

    cache = "hit"

    def record_fields(self) -> dict[str, Any]:
        return {**super().record_fields(), "cache": "hit"}


def start_hit_job(
    *,
    entry: Entry,
    text: str,
    model: str | None,
    voice: str | None,
    speed: float,
    knobs: Mapping[str, Any],
    response_format: str,
    stream_format: str,
    endpoint: str,
    job_kind: str,
) -> Any:
    """A running job for a hit, recorded like any synthesis (``cache="hit"``): history,
    statistics and progress see it. The caller finishes it when the bytes are sent."""
    meta = entry.meta
    values = {**KNOB_DEFAULTS, **knobs}
    job = HitJob(
        kind=job_kind,
        endpoint=endpoint,
        text=text,
        model=model or "",
        engine=meta["engine"],
        voice=voice or "",
        engine_voice=meta["engine_voice"],
        sample_rate=meta["sample_rate"],
        engine_sample_rate=meta["engine_sample_rate"],
        speed=float(speed),
        speed_applied=meta["speed_applied"],
        params={
            **{k: v for k, v in values.items() if v is not None},
            "given": sorted(knobs),
        },
        response_format=response_format,
        stream_format=stream_format,
        total_chunks=meta["total_chunks"],
    )
    job.status = JobStatus.RUNNING
    job.started_at = timezone.now()
    job.current_chunk = meta["total_chunks"]
    # The stored synthesis's PCM length: usage (and audio_seconds) are those of the miss.
    job.audio_bytes = meta["audio_bytes"]
    _start_recording(job)  # the one recorder every synthesis goes through
    return job


# A hit is sent in pieces of this size (SSE: one delta each).
HIT_PIECE_BYTES = 64 * 1024


async def hit_body(job: LiveJob, audio: bytes) -> AsyncIterator[bytes]:
    """A hit's bytes, in pieces; the job completes after the last one or is cancelled when
    the body is closed before. Returned started, so that closing it (or its collection)
    before the first piece still ends the job."""

    async def pieces() -> AsyncIterator[bytes]:
        try:
            yield b""
            for offset in range(0, len(audio), HIT_PIECE_BYTES):
                if offset:
                    # A turn of the loop between pieces: other requests go on while a long
                    # hit is sent, and a client's disconnect cancels the response here.
                    await asyncio.sleep(0)
                yield audio[offset : offset + HIT_PIECE_BYTES]
            job.finish(JobStatus.COMPLETED)
        except (GeneratorExit, asyncio.CancelledError):
            job.finish(JobStatus.CANCELLED, error="cancelled", detail="the consumer stopped")
            raise

    body = pieces()
    await anext(body)
    return body


async def cache_info() -> dict[str, Any]:
    """GET /v1/audio/speech/cache: the settings and what the directory holds (hits and
    misses are in /status/statistics, from the job records)."""
    store = from_settings()
    usage = await asyncio.to_thread(store.usage) if store is not None else Usage(0, 0)
    return {
        "enabled": store is not None,
        "directory": str(settings.PARLEY_TTS_CACHE_DIR),
        "max_bytes": max(0, int(settings.PARLEY_TTS_CACHE_MAX_BYTES)),
        "max_entry_bytes": store.max_entry_bytes if store is not None else 0,
        "engines": list(settings.PARLEY_TTS_CACHE_ENGINES),
        "entries": usage.entries,
        "bytes": usage.bytes,
    }


async def cache_clear() -> dict[str, Any]:
    """DELETE /v1/audio/speech/cache: remove every entry (the job records stay). Works with
    the cache turned off too: a leftover directory is emptied."""
    store = AudioCache(settings.PARLEY_TTS_CACHE_DIR, max_bytes=1, max_entry_bytes=1)
    removed = await asyncio.to_thread(store.clear)
    return {"cleared_entries": removed.entries, "cleared_bytes": removed.bytes}
