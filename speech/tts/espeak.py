"""eSpeak NG in-process through ctypes, from the ``espeakng-loader`` wheel.

libespeak-ng keeps global state and crashes when two threads synthesize at once, so one
daemon thread per process owns every call into it. Requests become jobs split at sentence
boundaries; the thread synthesizes one piece of one job at a time, round robin, so a long text
cannot hold up a short one for more than a piece. In synchronous mode espeak hands PCM to a
callback every ``buffer_ms`` milliseconds of audio; the callback forwards each buffer to the
job's queue at once, so the consumer gets its first chunk after well under a millisecond of
synthesis, not after the whole text. Returning 1 from the callback aborts synthesis: that is
how a cancelled job stops within one chunk.

The library also keeps synthesis state from one call to the next: the pitch flutter's
position and the glottal cycle count (function statics in wavegen.c), the automatic gain, the
breath resonators, the noise generator's seed and the echo buffer. So the same text came out
differently (by up to ~250 bytes) depending on what was spoken before it. Before every piece
the voice is set again (which clears the echo buffer) and the rest is put back to its
initial values: ``_WavegenState`` finds those statics in the library's symbol table. Then a
text's audio depends only on the text, voice and parameters. The klatt-synthesizer variants
(``klatt*``, ``robosoft*``, ``edward``, ``UniRobot``) keep noise state that is not reset and
still vary.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import itertools
import logging
import os
import queue
import re
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .base import (
    EngineCapabilities,
    EngineUnavailable,
    Mark,
    SynthChunk,
    SynthesisError,
    TTSEngine,
    VoiceInfo,
    VoiceNotFound,
    VoiceSample,
)
from .text import TextSpan, split_spans

__all__ = [
    "DEFAULT_RATE_WPM",
    "MAX_RATE_WPM",
    "MIN_RATE_WPM",
    "EspeakEngine",
    "process_count",
]

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_INITIALIZE_DONT_EXIT = 0x8000
_EE_OK = 0
_EE_NOT_FOUND = 2
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_SENTENCE = 2
_PARAM_RATE = 1
_PARAM_VOLUME = 2
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PARAM_WORDGAP = 7

DEFAULT_RATE_WPM = 175
MIN_RATE_WPM = 80  # espeak's floor: slower requests are clamped
# espeak documents 450 wpm as its maximum, but this build links sonic and measured durations
# scale linearly up to 1000 wpm; 700 wpm is 4x, the top of the API's speed range.
MAX_RATE_WPM = 700

# params accepted by this engine -> (espeak parameter, lowest, highest, default)
_PARAMS: dict[str, tuple[int, int, int, int]] = {
    "pitch": (_PARAM_PITCH, 0, 100, 50),
    "pitch_range": (_PARAM_RANGE, 0, 100, 50),
    "volume": (_PARAM_VOLUME, 0, 200, 100),
    "word_gap": (_PARAM_WORDGAP, 0, 100, 0),  # extra pause between words, in 10 ms units
}

# Pieces handed to espeak at once: long enough for natural sentence prosody, short enough
# that a job waits at most ~400 characters (~40 ms of synthesis) behind another. The first
# piece is shorter, so that under load every caller's first audio comes early.
_PIECE_CHARS = 400
_FIRST_PIECE_CHARS = 120
# A job whose consumer lags this far behind is parked until it catches up, so a slow client
# does not make the engine buffer a whole long text in memory.
_MAX_BUFFERED_SECONDS = 30.0
_POLL_SECONDS = 0.05


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),  # 1-based character index into the synthesized text
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # milliseconds since the start of the call
        ("sample", ctypes.c_int),  # samples since the start of the call
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_void_p),  # union of int / const char* / char[8]
    ]


class _Voice(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, NUL-terminated code)* then a 0 byte
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)
_GENDERS = {1: "male", 2: "female"}

logger = logging.getLogger(__name__)


def _elf_symbols(path: str) -> dict[str, tuple[int, int]]:
    """name -> (value, size) from a 64-bit little-endian ELF file's .symtab (local symbols
    included; function statics appear as ``name.NNNN``). Empty if there is none (stripped)."""
    with open(path, "rb") as file:
        data = file.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return {}
    section_offset = struct.unpack_from("<Q", data, 0x28)[0]
    entry_size, count = struct.unpack_from("<HH", data, 0x3A)
    # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
    sections = [
        struct.unpack_from("<IIQQQQIIQQ", data, section_offset + index * entry_size)
        for index in range(count)
    ]
    symbols: dict[str, tuple[int, int]] = {}
    for section in sections:
        if section[1] != 2:  # SHT_SYMTAB
            continue
        strings = sections[section[6]][4]
        for index in range(section[5] // 24):
            name, _, _, _, value, size = struct.unpack_from(
                "<IBBHQQ", data, section[4] + index * 24
            )
            start = strings + name
            symbols[data[start : data.index(b"\0", start)].decode("ascii", "replace")] = (
                value,
                size,
            )
    return symbols


class _WavegenState:
    """The library's leftover synthesis state, put back to its initial values before a piece.

    ``Flutter_ix`` (position in the pitch-flutter table), ``cycle_count`` (roughness
    modulation) and ``agc`` are statics in wavegen.c with no API to reset them; ``rbreath``
    holds the breath resonators' memory (x1, x2 of each RESONATOR {a, b, c, x1, x2}).
    """

    _RESONATOR_BYTES = 5 * 8

    def __init__(self, lib: ctypes.CDLL, library_path: str) -> None:
        symbols = _elf_symbols(library_path)

        def address(name: str, size: int | None = None) -> int:
            found = [key for key in symbols if key == name or key.startswith(f"{name}.")]
            if len(found) != 1:
                raise LookupError(name)
            value, actual = symbols[found[0]]
            # Never write through a symbol whose layout is not the one this code knows (a
            # different build of the library): better varying output than a corrupt heap.
            if size is not None and actual != size:
                raise LookupError(f"{name} is {actual} bytes, not {size}")
            return base + value

        base = ctypes.cast(lib.espeak_Synth, ctypes.c_void_p).value or 0
        base -= symbols["espeak_Synth"][0]
        int_size = ctypes.sizeof(ctypes.c_int)
        self._flutter = ctypes.c_int.from_address(address("Flutter_ix", int_size))
        self._cycles = ctypes.c_int.from_address(address("cycle_count", int_size))
        self._agc = ctypes.c_int.from_address(address("agc", int_size))
        if not symbols["rbreath"][1] or symbols["rbreath"][1] % self._RESONATOR_BYTES:
            raise LookupError(f"rbreath is {symbols['rbreath'][1]} bytes")
        breath = address("rbreath")
        self._breath_memory = [
            ctypes.c_double.from_address(breath + index * self._RESONATOR_BYTES + offset)
            for index in range(symbols["rbreath"][1] // self._RESONATOR_BYTES)
            for offset in (24, 32)
        ]
        self._seed = lib.espeak_ng_SetRandSeed
        self._seed.argtypes = [ctypes.c_long]
        self._seed.restype = None

    @classmethod
    def locate(cls, lib: ctypes.CDLL, library_path: str) -> _WavegenState | None:
        try:
            return cls(lib, library_path)
        except (OSError, KeyError, LookupError, AttributeError, struct.error) as error:
            logger.warning("espeak: cannot reset synthesis state (%r): output may vary", error)
            return None

    def reset(self) -> None:
        self._flutter.value = 0
        self._cycles.value = 0
        self._agc.value = 256
        for memory in self._breath_memory:
            memory.value = 0.0
        self._seed(1)


def _read_languages(address: int | None) -> list[str]:
    codes: list[str] = []
    if not address:
        return codes
    while ctypes.c_ubyte.from_address(address).value != 0:  # priority byte, 0 ends the list
        code = ctypes.string_at(address + 1)
        codes.append(code.decode("utf-8", "replace"))
        address += len(code) + 2
    return codes


@dataclass(frozen=True)
class _ListedVoice:
    name: str
    identifier: str
    gender: str | None
    languages: list[str]


@dataclass
class _Job:
    pieces: deque[TextSpan]
    voice: str
    rate: int
    settings: dict[int, int]
    cancel: threading.Event | None  # the caller's: only ever read, never set here
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    emitted_bytes: int = 0  # PCM bytes produced so far: the base for mark audio offsets
    piece_base: int = 0
    piece_start: int = 0
    pending_marks: list[Mark] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    buffered_bytes: int = 0
    parked: bool = False
    # Set when the consumer goes away; kept apart from ``cancel`` so that finishing a
    # stream does not flip an event the caller may share with other work (e.g. astream).
    abandoned: threading.Event = field(default_factory=threading.Event)

    @property
    def stopped(self) -> bool:
        return self.abandoned.is_set() or (self.cancel is not None and self.cancel.is_set())


class _Finished:
    pass


_FINISHED = _Finished()


@dataclass
class _Failed:
    error: BaseException


class _EspeakRuntime:
    """The loaded library and the one thread allowed to call into it."""

    def __init__(self, library_path: str, data_path: str, buffer_ms: int) -> None:
        try:
            self._lib = ctypes.CDLL(library_path)
        except OSError as error:
            raise EngineUnavailable(
                f"cannot load libespeak-ng from {library_path}: {error}"
            ) from error
        self.library_path = library_path
        self.data_path = data_path
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
        ]
        self._lib.espeak_Synth.restype = ctypes.c_int
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        self._lib.espeak_SetVoiceByName.restype = ctypes.c_int
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.restype = ctypes.c_int
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self._lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self._lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]

        self.sample_rate = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, buffer_ms, data_path.encode(), _INITIALIZE_DONT_EXIT
        )
        if self.sample_rate <= 0:
            raise EngineUnavailable(f"espeak_Initialize failed with data path {data_path}")
        # Keep a reference: ctypes frees the trampoline when the Python object dies.
        self._callback = _SynthCallback(self._on_audio)
        self._lib.espeak_SetSynthCallback(self._callback)
        self._state = _WavegenState.locate(self._lib, library_path)

        self._lock = threading.Lock()  # held around every call into the library
        self._ready: queue.Queue[_Job] = queue.Queue()
        self._active: _Job | None = None
        self._current_voice: str | None = None
        self._voices: list[VoiceInfo] | None = None
        self._variants: list[VoiceInfo] | None = None
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    def after_fork_in_child(self) -> None:
        # The child has no synthesis thread, and a lock held by the parent's would stay held.
        self._lock = threading.Lock()
        self._thread_lock = threading.Lock()
        self._ready = queue.Queue()
        self._active = None
        self._current_voice = None
        self._thread = None

    # -- voices -----------------------------------------------------------------------------

    def _list(self, variants: bool) -> list[_ListedVoice]:
        # espeak_ListVoices rebuilds (and frees) the array it returned last time: copy
        # everything out before the lock is released.
        spec = None
        family = ctypes.create_string_buffer(b"variant")  # alive until the call returns
        if variants:
            spec = _Voice()
            spec.languages = ctypes.cast(family, ctypes.c_void_p)
        with self._lock:
            array = self._lib.espeak_ListVoices(ctypes.byref(spec) if spec else None)
            found: list[_ListedVoice] = []
            index = 0
            while array[index]:
                raw = array[index].contents
                found.append(
                    _ListedVoice(
                        name=(raw.name or b"").decode("utf-8", "replace").strip(),
                        identifier=(raw.identifier or b"").decode("utf-8", "replace"),
                        gender=_GENDERS.get(raw.gender),
                        languages=_read_languages(raw.languages),
                    )
                )
                index += 1
            return found

    def _has_dictionary(self, identifier: str) -> bool:
        # A few voices ship without their dictionary in this wheel; they speak silence.
        voice_file = Path(self.data_path, "lang", identifier)
        dictionary = identifier.rsplit("/", 1)[-1].split("-")[0].lower()
        try:
            declared = re.search(
                r"^\s*dictionary\s+(\S+)", voice_file.read_text("utf-8", "replace"), re.M
            )
        except OSError:
            return True
        if declared:
            dictionary = declared.group(1)
        return Path(self.data_path, f"{dictionary}_dict").exists()

    def voices(self) -> list[VoiceInfo]:
        if self._voices is None:
            self._voices = [
                VoiceInfo(
                    id=listed.identifier.rsplit("/", 1)[-1].lower(),
                    name=listed.name,
                    language=listed.languages[0] if listed.languages else "",
                    gender=None,  # espeak reports "male" for every base voice
                )
                for listed in self._list(variants=False)
                if listed.identifier and self._has_dictionary(listed.identifier)
            ]
        return self._voices

    def variants(self) -> list[VoiceInfo]:
        if self._variants is None:
            self._variants = [
                VoiceInfo(
                    id=listed.identifier.rsplit("/", 1)[-1],
                    name=listed.name,
                    language="variant",
                    gender=listed.gender,
                )
                for listed in self._list(variants=True)
            ]
        return self._variants

    # -- the synthesis thread ---------------------------------------------------------------

    def submit(self, job: _Job) -> None:
        self._ensure_thread()
        self._ready.put(job)

    def _ensure_thread(self) -> None:
        with self._thread_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="espeak-ng", daemon=True)
                self._thread.start()

    def consumed(self, job: _Job, n_bytes: int) -> None:
        """Called by the consumer: un-park the job once it has drained half its buffer."""
        with job.lock:
            job.buffered_bytes -= n_bytes
            resume = job.parked and job.buffered_bytes <= self._max_buffered_bytes() // 2
            if resume:
                job.parked = False
        if resume:
            self._ready.put(job)

    def _max_buffered_bytes(self) -> int:
        return int(_MAX_BUFFERED_SECONDS * self.sample_rate) * 2

    def _run(self) -> None:
        while True:
            job = self._ready.get()
            if job.stopped:
                continue  # the consumer has gone; nobody reads job.out any more
            with job.lock:
                if job.buffered_bytes > self._max_buffered_bytes():
                    job.parked = True
                    continue
            try:
                self._synthesize_piece(job, job.pieces.popleft())
            except BaseException as error:
                job.out.put(_Failed(error))
                continue
            if job.pieces and not job.stopped:
                self._ready.put(job)  # back of the line: round robin between jobs
            else:
                if job.pending_marks:
                    job.out.put(SynthChunk(b"", tuple(job.pending_marks)))
                job.out.put(_FINISHED)

    def _synthesize_piece(self, job: _Job, piece: TextSpan) -> None:
        encoded = piece.text.encode("utf-8")
        with self._lock:
            # Set even when unchanged: it clears the echo buffer the last piece filled.
            status = self._lib.espeak_SetVoiceByName(job.voice.encode())
            if status != _EE_OK:
                self._current_voice = None
                if status == _EE_NOT_FOUND:
                    raise VoiceNotFound(job.voice, "espeak")
                raise SynthesisError(f"espeak_SetVoiceByName failed with status {status}")
            self._current_voice = job.voice
            # Every job sets every parameter: another job may have changed them.
            self._lib.espeak_SetParameter(_PARAM_RATE, job.rate, 0)
            for parameter, value in job.settings.items():
                self._lib.espeak_SetParameter(parameter, value, 0)
            job.piece_base = job.emitted_bytes
            job.piece_start = piece.start
            if self._state is not None:
                self._state.reset()
            self._active = job
            try:
                status = self._lib.espeak_Synth(
                    encoded,
                    len(encoded) + 1,
                    0,
                    _POS_CHARACTER,
                    0,
                    _CHARS_UTF8 | _ENDPAUSE,
                    None,
                    None,
                )
            finally:
                self._active = None
        if status != _EE_OK and not job.stopped:
            raise SynthesisError(f"espeak_Synth failed with status {status}")

    def _on_audio(self, wav: Any, n_samples: int, events: Any) -> int:
        job = self._active
        if job is None:
            return 1
        try:
            if job.stopped:
                return 1  # tells espeak to abort this synthesis
            index = 0
            while events[index].type != _EVENT_LIST_TERMINATED:
                event = events[index]
                index += 1
                if event.type not in (_EVENT_WORD, _EVENT_SENTENCE):
                    continue
                samples = event.sample or event.audio_position * self.sample_rate // 1000
                job.pending_marks.append(
                    Mark(
                        "word" if event.type == _EVENT_WORD else "sentence",
                        job.piece_start + max(event.text_position - 1, 0),
                        job.piece_base + samples * 2,
                    )
                )
            if n_samples > 0 and wav:
                pcm = ctypes.string_at(wav, n_samples * 2)
                chunk = SynthChunk(pcm, tuple(job.pending_marks))
                job.pending_marks.clear()
                job.emitted_bytes += len(pcm)
                with job.lock:
                    job.buffered_bytes += len(pcm)
                job.out.put(chunk)
            return 0
        except BaseException as error:  # an exception must not unwind through C
            job.out.put(_Failed(error))
            job.abandoned.set()
            return 1


_RUNTIMES: dict[tuple[str, str], _EspeakRuntime] = {}
_RUNTIMES_LOCK = threading.Lock()


def _reset_runtimes_in_child() -> None:
    global _RUNTIMES_LOCK
    _RUNTIMES_LOCK = threading.Lock()
    for runtime in _RUNTIMES.values():
        runtime.after_fork_in_child()
    # The parent's workers and their reader threads are the parent's: this process starts
    # its own on demand.
    _POOLS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_runtimes_in_child)


def _runtime(library_path: str | None, data_path: str | None, buffer_ms: int) -> _EspeakRuntime:
    if library_path is None or data_path is None:
        try:
            import espeakng_loader
        except ImportError as error:
            raise EngineUnavailable(
                "espeak needs the espeakng-loader package (pip install espeakng-loader)"
            ) from error
        library_path = library_path or espeakng_loader.get_library_path()
        try:
            data_path = data_path or espeakng_loader.get_data_path()
        except RuntimeError as error:
            raise EngineUnavailable(str(error)) from error
    key = (library_path, data_path)
    with _RUNTIMES_LOCK:
        # One runtime per library: ctypes returns the same handle, hence the same global state.
        if key not in _RUNTIMES:
            _RUNTIMES[key] = _EspeakRuntime(library_path, data_path, buffer_ms)
        return _RUNTIMES[key]


# --- the process pool ---------------------------------------------------------------------
#
# One thread per process can synthesize, so concurrent requests wait for each other, and the
# synthesis thread competes for the GIL with the server's event loop. The pool runs the same
# runtime in N worker processes (``python -c`` started with fork+exec, so nothing of the
# server's state is inherited), each with its own library and its own synthesis thread. A
# request goes to the worker with the fewest jobs; within a worker jobs are still served round
# robin by pieces. Chunks and marks come back over a pipe as they are produced; the consumer
# reports what it has taken, so a worker parks a job whose consumer lags (bounded memory), and
# a consumer that goes away cancels its job, which frees the worker within one chunk.

PROCESSES_SETTING = "PARLEY_ESPEAK_PROCESSES"
MAX_PROCESSES = 16
# A consumer tells its worker what it has taken in batches of this much audio (not per chunk):
# the parking threshold is 30 s, so a second of slack costs nothing.
_CONSUMED_REPORT_SECONDS = 1.0


def process_count() -> int:
    """Worker processes for synthesis: ``PARLEY_ESPEAK_PROCESSES`` (default: the core count),
    at most 16; 0 synthesizes in a thread of this process instead."""
    raw = os.environ.get(PROCESSES_SETTING, "").strip()
    try:
        wanted = int(raw) if raw else (os.cpu_count() or 1)
    except ValueError:
        logger.warning(
            "espeak: %s=%r is not a number: using the core count", PROCESSES_SETTING, raw
        )
        wanted = os.cpu_count() or 1
    return min(max(wanted, 0), MAX_PROCESSES)


class _Outbox:
    """A worker-side job's ``out``: what the runtime puts is sent to the parent at once."""

    def __init__(self, job_id: int, send: Any, jobs: dict[int, _Job]) -> None:
        self._id = job_id
        self._send = send
        self._jobs = jobs

    def put(self, item: Any) -> None:
        if isinstance(item, SynthChunk):
            self._send(("chunk", self._id, item.pcm, tuple(tuple(mark) for mark in item.marks)))
            return
        self._jobs.pop(self._id, None)
        if isinstance(item, _Failed):
            error = item.error
            self._send(("fail", self._id, type(error).__name__, str(error)))
        else:
            self._send(("end", self._id))


def _worker_main(
    command_fd: int, result_fd: int, library_path: str, data_path: str, buffer_ms: int
) -> None:
    """A worker process: the runtime's synthesis thread, fed by commands from the parent."""
    import signal
    from multiprocessing.connection import Connection

    # Ctrl-C reaches the whole process group: the server shuts down, and its closed pipe
    # ends this process (no traceback of its own).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    commands = Connection(command_fd, writable=False)
    results = Connection(result_fd, readable=False)
    runtime = _runtime(library_path, data_path, buffer_ms)
    jobs: dict[int, _Job] = {}
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock, contextlib.suppress(OSError):
            results.send(message)

    while True:
        try:
            message = commands.recv()
        except (EOFError, OSError):
            return  # the parent has gone
        kind, job_id = message[0], message[1]
        if kind == "start":
            _, _, pieces, voice, rate, settings = message
            job = _Job(
                pieces=deque(TextSpan(*piece) for piece in pieces),
                voice=voice,
                rate=rate,
                settings=settings,
                cancel=None,
            )
            job.out = _Outbox(job_id, send, jobs)  # type: ignore[assignment]
            jobs[job_id] = job
            runtime.submit(job)
        elif (job := jobs.get(job_id)) is not None:
            if kind == "cancel":
                jobs.pop(job_id, None)
                job.abandoned.set()
            elif kind == "consumed":
                runtime.consumed(job, message[2])


@dataclass
class _RemoteJob:
    id: int
    voice: str
    out: queue.Queue[Any] = field(default_factory=queue.Queue)
    # An asyncio consumer's loop and queue (``asynthesize``): the worker's reader thread
    # hands each chunk straight to the loop, with no thread of its own in between.
    loop: asyncio.AbstractEventLoop | None = None
    aqueue: asyncio.Queue[Any] | None = None
    unreported_bytes: int = 0
    finished: bool = False

    def deliver(self, item: Any) -> None:
        if self.loop is None:
            self.out.put(item)
            return
        assert self.aqueue is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self.aqueue.put_nowait, item)


class _Worker:
    """One worker process, the pipes to it and the thread that reads its results."""

    def __init__(self, index: int, library_path: str, data_path: str, buffer_ms: int) -> None:
        from multiprocessing.connection import Connection

        command_read, command_write = os.pipe()
        result_read, result_write = os.pipe()
        code = (
            "from speech.tts.espeak import _worker_main; "
            f"_worker_main({command_read}, {result_write}, {library_path!r}, {data_path!r}, "
            f"{buffer_ms})"
        )
        root = str(Path(__file__).resolve().parents[2])  # the directory holding ``speech``
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH")))),
        }
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", code],
                pass_fds=(command_read, result_write),
                stdin=subprocess.DEVNULL,
                env=env,
            )
        finally:
            os.close(command_read)
            os.close(result_write)
        self.index = index
        self._commands = Connection(command_write, readable=False)
        self._results = Connection(result_read, writable=False)
        self._send_lock = threading.Lock()
        self.jobs: dict[int, _RemoteJob] = {}
        self.alive = True
        self._reader = threading.Thread(
            target=self._read, name=f"espeak-worker-{index}", daemon=True
        )
        self._reader.start()

    def send(self, message: tuple[Any, ...]) -> None:
        with self._send_lock:
            self._commands.send(message)

    def _read(self) -> None:
        while True:
            try:
                message = self._results.recv()
            except (EOFError, OSError):
                break
            job = self.jobs.get(message[1])
            if job is None:
                continue  # cancelled: its consumer has gone
            kind = message[0]
            if kind == "chunk":
                job.deliver(SynthChunk(message[2], tuple(Mark(*mark) for mark in message[3])))
            elif kind == "end":
                job.deliver(_FINISHED)
            else:
                name, text = message[2], message[3]
                error: BaseException = (
                    VoiceNotFound(job.voice, "espeak")
                    if name == "VoiceNotFound"
                    else SynthesisError(text)
                )
                job.deliver(_Failed(error))
        closing, self.alive = not self.alive, False
        for job in list(self.jobs.values()):
            job.deliver(_Failed(SynthesisError("the espeak worker process exited")))
        with contextlib.suppress(Exception):
            self.process.wait(timeout=1)
        if not closing:
            logger.warning("espeak worker %d exited (code %s)", self.index, self.process.returncode)

    def close(self) -> None:
        self.alive = False
        with contextlib.suppress(OSError):
            self._commands.close()  # the worker sees EOF and exits
        with contextlib.suppress(Exception):
            self.process.wait(timeout=2)
        if self.process.poll() is None:
            self.process.kill()


class _EspeakPool:
    """``size`` worker processes; a job goes to the one with the fewest jobs."""

    def __init__(
        self, size: int, library_path: str, data_path: str, buffer_ms: int, sample_rate: int
    ) -> None:
        self._spec = (library_path, data_path, buffer_ms)
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._report_bytes = int(_CONSUMED_REPORT_SECONDS * sample_rate) * 2
        # Started now, so the first request does not wait for the interpreters to start.
        self._workers = [_Worker(index, *self._spec) for index in range(size)]

    @property
    def size(self) -> int:
        return len(self._workers)

    def submit(
        self,
        pieces: list[TextSpan],
        voice: str,
        rate: int,
        settings: dict[int, int],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> tuple[_Worker, _RemoteJob]:
        with self._lock:
            for index, worker in enumerate(self._workers):
                if not worker.alive:  # crashed: its jobs have failed; a new one takes its place
                    self._workers[index] = _Worker(index, *self._spec)
            worker = min(self._workers, key=lambda w: len(w.jobs))
            job = _RemoteJob(next(self._ids), voice)
            if loop is not None:
                job.loop, job.aqueue = loop, asyncio.Queue()
            worker.jobs[job.id] = job
        message = (
            "start",
            job.id,
            [(p.start, p.end, p.text) for p in pieces],
            voice,
            rate,
            settings,
        )
        try:
            worker.send(message)
        except OSError as error:
            worker.jobs.pop(job.id, None)
            raise SynthesisError(f"the espeak worker process is gone: {error}") from error
        return worker, job

    def consumed(self, worker: _Worker, job: _RemoteJob, n_bytes: int) -> None:
        job.unreported_bytes += n_bytes
        if job.unreported_bytes >= self._report_bytes:
            with contextlib.suppress(OSError):
                worker.send(("consumed", job.id, job.unreported_bytes))
            job.unreported_bytes = 0

    def release(self, worker: _Worker, job: _RemoteJob) -> None:
        """The consumer is done with ``job``: forget it, and stop it if it still runs."""
        worker.jobs.pop(job.id, None)
        if not job.finished:
            with contextlib.suppress(OSError):
                worker.send(("cancel", job.id))

    def close(self) -> None:
        for worker in self._workers:
            worker.close()


_POOLS: dict[tuple[str, str, int, int], _EspeakPool] = {}


def _pool(runtime: _EspeakRuntime, size: int, buffer_ms: int) -> _EspeakPool:
    key = (runtime.library_path, runtime.data_path, buffer_ms, size)
    with _RUNTIMES_LOCK:
        if key not in _POOLS:
            _POOLS[key] = _EspeakPool(
                size, runtime.library_path, runtime.data_path, buffer_ms, runtime.sample_rate
            )
        return _POOLS[key]


def _close_pools() -> None:
    for pool in _POOLS.values():
        pool.close()
    _POOLS.clear()


atexit.register(_close_pools)


def _pieces(text: str) -> list[TextSpan]:
    pieces = split_spans(text, "sentence", _PIECE_CHARS)
    if pieces and len(pieces[0].text) > _FIRST_PIECE_CHARS:
        first = pieces.pop(0)
        pieces[:0] = [
            TextSpan(first.start + span.start, first.start + span.end, span.text)
            for span in split_spans(first.text, "sentence", _FIRST_PIECE_CHARS)
        ]
    return pieces


def _param_setting(name: str, value: Any) -> int:
    _, low, high, _ = _PARAMS[name]
    try:
        number = round(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number") from None
    return min(max(number, low), high)


class EspeakEngine(TTSEngine):
    """eSpeak NG voices, 22050 Hz. ``voice`` is a voice id optionally with ``+variant``
    (e.g. ``en-us+f3``); see :meth:`voices` and :meth:`variants`."""

    name = "espeak"
    capabilities = EngineCapabilities(
        voice_cloning=False,
        word_marks=True,
        sentence_marks=True,
        params=frozenset({"speed", *_PARAMS}),
        speed_range=(MIN_RATE_WPM / DEFAULT_RATE_WPM, MAX_RATE_WPM / DEFAULT_RATE_WPM),
        notes=(
            "speed maps to words per minute (1.0 = 175 wpm) and is clamped to 80-700 wpm, "
            "so speeds below ~0.46 sound like 0.46. params: pitch 0-100 (50), "
            "pitch_range 0-100 (50), volume 0-200 (100), word_gap in 10 ms units (0)."
        ),
    )

    def __init__(
        self,
        *,
        default_voice: str = "en-us",
        library_path: str | None = None,
        data_path: str | None = None,
        buffer_ms: int = 60,
        processes: int | None = None,
    ) -> None:
        """``processes``: worker processes (default ``process_count()``: the
        PARLEY_ESPEAK_PROCESSES setting); 0 synthesizes in a thread of this process."""
        self._runtime = _runtime(library_path, data_path, buffer_ms)
        self.sample_rate = self._runtime.sample_rate
        size = process_count() if processes is None else min(max(processes, 0), MAX_PROCESSES)
        self._pool = _pool(self._runtime, size, buffer_ms) if size else None
        if self._pool is not None:
            # astream uses an engine's ``asynthesize`` when it has one; the in-thread path
            # has none and keeps astream's relay thread.
            self.asynthesize = self._asynthesize_remote
        self._default_voice = default_voice
        self._aliases: dict[str, str] | None = None

    @property
    def default_voice(self) -> str:
        return self._default_voice

    def voices(self) -> list[VoiceInfo]:
        return list(self._runtime.voices())

    def variants(self) -> list[VoiceInfo]:
        """Voice variants (``m1``..``m8``, ``f1``..``f5``, named ones) to append as ``+id``."""
        return list(self._runtime.variants())

    def resolve_voice(self, voice: str | None) -> str:
        """The canonical ``id[+variant]`` for a voice id, file name or language code."""
        if self._aliases is None:
            aliases: dict[str, str] = {}
            for info in reversed(self._runtime.voices()):  # first listed wins on language
                aliases[info.language.lower()] = info.id
            for info in self._runtime.voices():
                aliases[info.name.lower()] = info.id
                aliases[info.id] = info.id
            self._aliases = aliases
        requested = voice or self._default_voice
        base, _, variant = requested.partition("+")
        canonical = self._aliases.get(base.strip().lower())
        if canonical is None:
            raise VoiceNotFound(requested, self.name)
        if variant:
            known = {info.id.lower(): info.id for info in self._runtime.variants()}
            if variant.strip().lower() not in known:
                raise VoiceNotFound(requested, self.name)
            canonical = f"{canonical}+{known[variant.strip().lower()]}"
        return canonical

    def check_request(
        self,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        voice_sample: VoiceSample | None = None,
    ) -> None:
        self.check_sample_and_speed(speed=speed, voice_sample=voice_sample)
        self.resolve_voice(voice)

    def rate_for(self, speed: float) -> int:
        return min(max(round(DEFAULT_RATE_WPM * speed), MIN_RATE_WPM), MAX_RATE_WPM)

    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        params: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        voice_sample: VoiceSample | None = None,
    ) -> Iterator[SynthChunk]:
        # Validation happens here, eagerly, so a bad request fails before any streaming starts.
        self.check_request(voice=voice, speed=speed, voice_sample=voice_sample)
        settings = self._settings(params)
        pieces = _pieces(text.replace("\x00", " "))
        if self._pool is not None:
            return self._stream_remote(
                pieces, self.resolve_voice(voice), self.rate_for(speed), settings, cancel
            )
        job = _Job(
            pieces=deque(pieces),
            voice=self.resolve_voice(voice),
            rate=self.rate_for(speed),
            settings=settings,
            cancel=cancel,
        )
        return self._stream(job)

    @staticmethod
    def _settings(params: Mapping[str, Any] | None) -> dict[int, int]:
        params = params or {}
        return {
            parameter: _param_setting(name, params[name]) if name in params else default
            for name, (parameter, _, _, default) in _PARAMS.items()
        }

    async def _asynthesize_remote(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        params: Mapping[str, Any] | None = None,
        voice_sample: VoiceSample | None = None,
    ) -> AsyncIterator[SynthChunk]:
        """``synthesize`` for asyncio, the engine's ``asynthesize`` when it has worker
        processes (``astream`` prefers it): chunks go from the worker's reader thread
        straight to the event loop, with no thread per request in between."""
        self.check_request(voice=voice, speed=speed, voice_sample=voice_sample)
        settings = self._settings(params)
        pieces = _pieces(text.replace("\x00", " "))
        if not pieces:
            return
        assert self._pool is not None
        worker, job = self._pool.submit(
            pieces,
            self.resolve_voice(voice),
            self.rate_for(speed),
            settings,
            loop=asyncio.get_running_loop(),
        )
        assert job.aqueue is not None
        try:
            while True:
                item = await job.aqueue.get()
                if isinstance(item, _Finished):
                    job.finished = True
                    return
                if isinstance(item, _Failed):
                    job.finished = True
                    raise item.error
                self._pool.consumed(worker, job, len(item.pcm))
                yield item
        finally:
            # Finished, or the consumer left (aclose, cancellation): the worker drops it.
            self._pool.release(worker, job)

    def _stream_remote(
        self,
        pieces: list[TextSpan],
        voice: str,
        rate: int,
        settings: dict[int, int],
        cancel: threading.Event | None,
    ) -> Iterator[SynthChunk]:
        if not pieces:
            return
        assert self._pool is not None
        worker, job = self._pool.submit(pieces, voice, rate, settings)
        try:
            while True:
                try:
                    item = job.out.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if cancel is not None and cancel.is_set():
                        return
                    continue
                if isinstance(item, _Finished):
                    job.finished = True
                    return
                if isinstance(item, _Failed):
                    job.finished = True
                    raise item.error
                self._pool.consumed(worker, job, len(item.pcm))
                if cancel is not None and cancel.is_set():
                    return
                yield item
        finally:
            # Finished, broken out of, or cancelled: the worker drops the job (and stops
            # synthesizing it at its next chunk if it still runs).
            self._pool.release(worker, job)

    def _stream(self, job: _Job) -> Iterator[SynthChunk]:
        if not job.pieces:
            return
        self._runtime.submit(job)
        try:
            while True:
                try:
                    item = job.out.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    if job.stopped:
                        return
                    continue
                if isinstance(item, _Finished):
                    return
                if isinstance(item, _Failed):
                    raise item.error
                self._runtime.consumed(job, len(item.pcm))
                if job.stopped:
                    return
                yield item
        finally:
            # Consumer gone (finished, broke out, or cancelled): stop the synthesis thread's
            # work on this job at its next callback.
            job.abandoned.set()
