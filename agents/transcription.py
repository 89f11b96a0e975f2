"""Speech to text over HTTP: OpenAI's ``POST /v1/audio/transcriptions`` (docs/agent.md).

One service, :func:`transcription_create`: validate the form fields, decode the uploaded file
(any container ffmpeg reads) to PCM16 mono 16 kHz, run an STT engine (agents.stt) on it. The
rest of the module renders the result in each ``response_format`` OpenAI defines (json, text,
verbose_json, srt, vtt) or as the Server-Sent Events of ``stream=true``; those helpers are pure.

Decoding runs the ffmpeg binary of ``imageio-ffmpeg``, which writes PCM16 mono 16 kHz itself.
That wheel has no ffprobe, so the container and codec are recognised here from the file's
first bytes (:func:`sniff_audio`) and passed to ffmpeg. A request's cost is bounded by its
size: at most PARLEY_STT_MAX_SECONDS of audio is decoded (ffmpeg's ``-t``), a header that
promises more is refused before ffmpeg runs (:func:`header_seconds`), and so is a sample rate
under MIN_SAMPLE_RATE (a multiplier of the work, not a recording).
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import struct
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings

from agents.engines.stt import Segment, SttError, SttUnavailable, Transcript
from agents.stt import get_stt
from speech.encoding import ffmpeg_exe
from speech.services import usage_for
from streams.errors import ApiError

SAMPLE_RATE = 16000  # what every engine is fed: PCM16LE mono at 16 kHz
BYTES_PER_SECOND = SAMPLE_RATE * 2
MIN_AUDIO_S = 0.1  # OpenAI refuses shorter audio (audio_too_short)

# model -> engine (None: PARLEY_STT_ENGINE). OpenAI's model names answer with the default
# engine; an engine's own name picks it.
OPENAI_MODELS = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
ENGINE_MODELS = ("whisper", "openai")
MODELS: dict[str, str | None] = {
    **dict.fromkeys(OPENAI_MODELS),
    **{name: name for name in ENGINE_MODELS},
}
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
STREAM_FORMATS = ("json", "text")  # what stream=true can be combined with (as OpenAI)
TIMESTAMP_GRANULARITIES = ("segment",)  # "word" is refused: no engine gives word times
CONTENT_TYPES = {
    "json": "application/json",
    "verbose_json": "application/json",
    "text": "text/plain; charset=utf-8",
    "srt": "application/x-subrip; charset=utf-8",
    "vtt": "text/vtt; charset=utf-8",
}
SSE_CONTENT_TYPE = "text/event-stream"
# Whisper's languages (ISO-639-1, plus haw and yue, which have no two-letter code), with the
# names verbose_json reports as OpenAI does ("english", not "en").
LANGUAGES: dict[str, str] = {
    "en": "english", "zh": "chinese", "de": "german", "es": "spanish", "ru": "russian",
    "ko": "korean", "fr": "french", "ja": "japanese", "pt": "portuguese", "tr": "turkish",
    "pl": "polish", "ca": "catalan", "nl": "dutch", "ar": "arabic", "sv": "swedish",
    "it": "italian", "id": "indonesian", "hi": "hindi", "fi": "finnish", "vi": "vietnamese",
    "he": "hebrew", "uk": "ukrainian", "el": "greek", "ms": "malay", "cs": "czech",
    "ro": "romanian", "da": "danish", "hu": "hungarian", "ta": "tamil", "no": "norwegian",
    "th": "thai", "ur": "urdu", "hr": "croatian", "bg": "bulgarian", "lt": "lithuanian",
    "la": "latin", "mi": "maori", "ml": "malayalam", "cy": "welsh", "sk": "slovak",
    "te": "telugu", "fa": "persian", "lv": "latvian", "bn": "bengali", "sr": "serbian",
    "az": "azerbaijani", "sl": "slovenian", "kn": "kannada", "et": "estonian",
    "mk": "macedonian", "br": "breton", "eu": "basque", "is": "icelandic", "hy": "armenian",
    "ne": "nepali", "mn": "mongolian", "bs": "bosnian", "kk": "kazakh", "sq": "albanian",
    "sw": "swahili", "gl": "galician", "mr": "marathi", "pa": "punjabi", "si": "sinhala",
    "km": "khmer", "sn": "shona", "yo": "yoruba", "so": "somali", "af": "afrikaans",
    "oc": "occitan", "ka": "georgian", "be": "belarusian", "tg": "tajik", "sd": "sindhi",
    "gu": "gujarati", "am": "amharic", "yi": "yiddish", "lo": "lao", "uz": "uzbek",
    "fo": "faroese", "ht": "haitian creole", "ps": "pashto", "tk": "turkmen", "nn": "nynorsk",
    "mt": "maltese", "sa": "sanskrit", "lb": "luxembourgish", "my": "myanmar", "bo": "tibetan",
    "tl": "tagalog", "mg": "malagasy", "as": "assamese", "tt": "tatar", "haw": "hawaiian",
    "ln": "lingala", "ha": "hausa", "ba": "bashkir", "jw": "javanese", "su": "sundanese",
    "yue": "cantonese",
}  # fmt: skip
AUDIO_KINDS = "wav, mp3, m4a/mp4 (aac, alac), aac, ogg (opus, vorbis, flac), webm/mkv, flac"
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
_DELTA = re.compile(r"\s*\S+")


@dataclass(frozen=True, slots=True)
class TranscriptionRequest:
    """The validated form fields (everything but the file)."""

    model: str
    engine: str | None  # None: the default engine
    response_format: str = "json"
    language: str | None = None
    prompt: str | None = None
    temperature: float | None = None  # accepted, not used
    timestamp_granularities: tuple[str, ...] = ()
    stream: bool = False

    @property
    def wants_segments(self) -> bool:
        return self.response_format in ("verbose_json", "srt", "vtt")


@dataclass(frozen=True, slots=True)
class AudioFile:
    """The uploaded ``file``: on disk at ``path`` (a large upload) or in ``content``, and
    the name the client gave it."""

    size: int
    name: str = ""
    path: Path | None = None
    content: bytes = b""


@dataclass(frozen=True, slots=True)
class TranscriptionResult:
    request: TranscriptionRequest
    transcript: Transcript
    duration_s: float  # of the decoded audio


# --- fields --------------------------------------------------------------------------------


def _text(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ApiError(f"invalid_{name}", f"{name} must be a string.", field=name)
    return value


def _model(fields: Mapping[str, Any]) -> tuple[str, str | None]:
    accepted = ", ".join(MODELS)
    raw = (_text(fields, "model") or "").strip()
    if not raw:
        raise ApiError("missing_model", f"model is required: one of {accepted}.", field="model")
    if raw not in MODELS:
        raise ApiError(
            "unknown_model", f"Unknown model {raw!r}; accepted: {accepted}.", field="model"
        )
    return raw, MODELS[raw]


def _language(fields: Mapping[str, Any]) -> str | None:
    raw = (_text(fields, "language") or "").strip()
    if not raw:
        return None
    code = raw.replace("_", "-").split("-")[0].lower()  # "en-US" -> "en", as the engines do
    if code not in LANGUAGES:
        raise ApiError(
            "invalid_language",
            f"language must be an ISO-639-1 code such as 'en' or 'fr'; got {raw!r}.",
            field="language",
        )
    return code


def _temperature(fields: Mapping[str, Any]) -> float | None:
    raw = (_text(fields, "temperature") or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ApiError(
            "invalid_temperature",
            f"temperature must be a number from 0 to 1; got {raw!r}.",
            field="temperature",
        )
    return value


def _granularities(values: Sequence[str]) -> tuple[str, ...]:
    found: list[str] = []
    for raw in values:
        value = raw.strip()
        if value == "word":
            raise ApiError(
                "unsupported_timestamp_granularity",
                "Word timestamps are not supported; use 'segment' (with verbose_json, srt or vtt).",
                field="timestamp_granularities[]",
            )
        if value not in TIMESTAMP_GRANULARITIES:
            raise ApiError(
                "invalid_timestamp_granularities",
                f"timestamp_granularities[] must be 'segment' (or 'word'); got {raw!r}.",
                field="timestamp_granularities[]",
            )
        if value not in found:
            found.append(value)
    return tuple(found)


def transcription_request(
    fields: Mapping[str, Any], *, granularities: Sequence[str] = ()
) -> TranscriptionRequest:
    """Validate the form fields OpenAI defines; unknown fields are ignored, as OpenAI does
    (its SDK sends ``include[]``, ``chunking_strategy`` and others Parley has no use for).

    ``granularities`` are the values of ``timestamp_granularities[]`` (a repeated field).
    """
    model, engine = _model(fields)
    response_format = (_text(fields, "response_format") or "json").strip() or "json"
    if response_format not in RESPONSE_FORMATS:
        raise ApiError(
            "invalid_response_format",
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; "
            f"got {response_format!r}.",
            field="response_format",
        )
    stream_raw = (_text(fields, "stream") or "").strip().lower()
    if stream_raw not in _TRUE + _FALSE:
        raise ApiError("invalid_stream", "stream must be true or false.", field="stream")
    stream = stream_raw in _TRUE
    if stream and response_format not in STREAM_FORMATS:
        raise ApiError(
            "unsupported_stream_format",
            f"stream=true answers Server-Sent Events of the text: response_format must be "
            f"json or text, not {response_format}.",
            field="response_format",
        )
    return TranscriptionRequest(
        model=model,
        engine=engine,
        response_format=response_format,
        language=_language(fields),
        prompt=_text(fields, "prompt") or None,
        temperature=_temperature(fields),
        timestamp_granularities=_granularities(granularities),
        stream=stream,
    )


# --- decoding ------------------------------------------------------------------------------

# RIFF/WAVE -> ffmpeg decoder: integer PCM by bits per sample, other format tags by tag.
_WAV_PCM = {8: "pcm_u8", 16: "pcm_s16le", 24: "pcm_s24le", 32: "pcm_s32le"}
_WAV_TAGS = {3: "pcm_f32le", 6: "pcm_alaw", 7: "pcm_mulaw", 0x55: "mp3"}
# Format tags of plain samples (PCM, float, A-law, µ-law) and the sample sizes they come in:
# their byte rate is rate x channels x bits / 8, so the header tells the audio's length.
_WAV_BITS = {1: (8, 16, 24, 32), 3: (32, 64), 6: (8,), 7: (8,)}
_WAV_PLAIN = "8/16/24/32-bit integer PCM, 32/64-bit float, 8-bit A-law or µ-law"
# Sample rates a header may declare. Under 1 kHz is no recording of speech, and a low rate
# multiplies the work: 2 KB of WAV "at 1 Hz" is 1000 s of audio once resampled to 16 kHz.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
# Wall-clock limit of one ffmpeg run (its output is capped at PARLEY_STT_MAX_SECONDS of
# audio, which takes it seconds): a file that stalls the decoder is refused, not waited on.
DECODE_TIMEOUT_S = 120.0
# Matroska/WebM CodecID -> ffmpeg decoder.
_MKV_CODECS = {
    b"A_OPUS": "opus",
    b"A_VORBIS": "vorbis",
    b"A_AAC": "aac",
    b"A_MPEG/L3": "mp3",
    b"A_FLAC": "flac",
    b"A_PCM/INT/LIT": "pcm_s16le",
}
# MP4 sample entry (stsd) -> ffmpeg decoder.
_MP4_CODECS = {
    b"mp4a": "aac",
    b"alac": "alac",
    b"Opus": "opus",
    b"fLaC": "flac",
    b".mp3": "mp3",
    b"samr": "amrnb",
}
# Last resort when the bytes say nothing: the file name's extension.
_EXTENSIONS = {
    "mp3": ("mp3", "mp3"),
    "m4a": ("mov", "aac"),
    "mp4": ("mov", "aac"),
    "aac": ("aac", "aac"),
    "opus": ("ogg", "opus"),
    "ogg": ("ogg", "vorbis"),
    "oga": ("ogg", "vorbis"),
    "webm": ("matroska", "opus"),
    "flac": ("flac", "flac"),
    "wav": ("wav", "pcm_s16le"),
}
_FFMPEG_CONTEXT = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")  # "[in#0 @ 0x5562...] "


@dataclass(frozen=True, slots=True)
class WavFormat:
    """A RIFF/WAVE header: its ``fmt `` chunk, and where its ``data`` chunk's bytes start."""

    tag: int  # the format tag (a WAVE_FORMAT_EXTENSIBLE's sub-format)
    channels: int
    rate: int
    bits: int
    data_start: int | None = None  # None: no data chunk in the bytes read
    data_size: int = 0  # as declared: 0xFFFFFFFF in a streamed header


def wav_format(data: bytes) -> WavFormat | None:
    """The header of a RIFF/WAVE file's first bytes, or None if they hold no ``fmt `` chunk."""
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        if chunk_id == b"fmt " and pos + 24 <= len(data):
            tag, channels, rate, _byte_rate, _align, bits = struct.unpack(
                "<HHIIHH", data[pos + 8 : pos + 24]
            )
            if tag == 0xFFFE and pos + 34 <= len(data):  # WAVE_FORMAT_EXTENSIBLE
                tag = struct.unpack("<H", data[pos + 32 : pos + 34])[0]
            fmt = (tag, channels, rate, bits)
        elif chunk_id == b"data" and fmt is not None:
            return WavFormat(*fmt, data_start=pos + 8, data_size=size)
        pos += 8 + size + (size & 1)
    return WavFormat(*fmt) if fmt is not None else None


def _wav_codec(wav: WavFormat) -> str | None:
    """The ffmpeg decoder of a WAV format, or None if the table has none."""
    if wav.tag == 1:
        return _WAV_PCM.get(wav.bits)
    if wav.tag == 3 and wav.bits == 64:
        return "pcm_f64le"
    return _WAV_TAGS.get(wav.tag)


def _mp4_codec(data: bytes) -> str:
    start = data.find(b"stsd")
    while start != -1:
        entry = data[start + 16 : start + 20]
        if entry in _MP4_CODECS:
            return _MP4_CODECS[entry]
        start = data.find(b"stsd", start + 4)
    return "aac"


def _is_mp3(data: bytes) -> bool:
    if data[:3] == b"ID3":
        return True
    # An MPEG audio frame sync: 11 set bits, layer III.
    return len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE6) == 0xE2


def sniff_audio(data: bytes, filename: str = "") -> tuple[str, str] | None:
    """``(ffmpeg demuxer, ffmpeg decoder)`` of an audio file, from its first bytes (all of
    them for MP4, whose codec may be described at the end), or from ``filename``'s extension
    when the bytes are not recognised; None when neither says.

    >>> sniff_audio(b"fLaC\\0\\0\\0\\x22")
    ('flac', 'flac')
    """
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        wav = wav_format(data[:4096])
        return "wav", (_wav_codec(wav) if wav is not None else None) or "pcm_s16le"
    if data[:4] == b"fLaC":
        return "flac", "flac"
    if data[:4] == b"OggS":
        head = data[:512]
        for marker, codec in ((b"OpusHead", "opus"), (b"\x01vorbis", "vorbis")):
            if marker in head:
                return "ogg", codec
        if b"\x7fFLAC" in head:
            return "ogg", "flac"
        if b"Speex   " in head:
            return "ogg", "speex"
        return "ogg", "opus"
    if data[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska or WebM
        head = data[:65536]
        for codec_id, codec in _MKV_CODECS.items():
            if codec_id in head:
                return "matroska", codec
        return "matroska", "opus"
    if data[4:8] == b"ftyp":
        return "mov", _mp4_codec(data)
    if len(data) > 1 and data[0] == 0xFF and (data[1] & 0xF6) == 0xF0:  # ADTS AAC
        return "aac", "aac"
    if _is_mp3(data):
        return "mp3", "mp3"
    if data[:6] == b"#!AMR\n":
        return "amr", "amrnb"
    return _EXTENSIONS.get(Path(filename).suffix.lower().lstrip("."))


# --- what a header promises: checked before ffmpeg runs --------------------------------------


def _decode_error(reason: str) -> ApiError:
    return ApiError("undecodable_audio", f"Could not decode file: {reason}", field="file")


def _check_rate(rate: int, kind: str) -> None:
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise ApiError(
            "unsupported_sample_rate",
            f"The file's {kind} header says its sample rate is {rate} Hz; the rates accepted "
            f"are {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz.",
            field="file",
        )


def _too_long(what: str, limit: float) -> ApiError:
    return ApiError(
        "audio_too_long",
        f"{what}; the longest accepted is {limit:g} s (PARLEY_STT_MAX_SECONDS).",
        field="file",
    )


def _wav_seconds(head: bytes, file_size: int) -> float | None:
    wav = wav_format(head)
    if wav is None:
        return None  # ffmpeg says what is wrong
    if wav.channels == 0:
        raise _decode_error("its WAV header says it has 0 channels.")
    _check_rate(wav.rate, "WAV")
    if wav.tag not in _WAV_BITS:
        return None  # a codec in a WAV (mp3, ADPCM, …): ffmpeg decodes it, up to the cap
    if wav.bits not in _WAV_BITS[wav.tag]:
        raise _decode_error(
            f"its WAV header says {wav.bits}-bit samples of format {wav.tag}; WAV is read as "
            f"{_WAV_PLAIN} (or a codec ffmpeg knows)."
        )
    if wav.data_start is None:
        return None
    stored = min(wav.data_size, max(0, file_size - wav.data_start))  # a streamed size: all
    return stored / (wav.rate * wav.channels * wav.bits / 8)


def _flac_seconds(data: bytes) -> float | None:
    """From ``fLaC`` and its STREAMINFO block: after the block header and the block and frame
    sizes (10 bytes), 20 bits of rate, 3 of channels, 5 of sample size, 36 of samples."""
    if len(data) < 26 or data[:4] != b"fLaC" or data[4] & 0x7F != 0:
        return None
    fields = int.from_bytes(data[18:26], "big")
    rate, samples = fields >> 44, fields & ((1 << 36) - 1)
    _check_rate(rate, "FLAC")
    return samples / rate if samples else None  # 0 samples: the encoder did not know


def _ogg_seconds(head: bytes) -> float | None:
    vorbis = head.find(b"\x01vorbis")  # the identification header: version, channels, rate
    if vorbis != -1 and vorbis + 16 <= len(head):
        _check_rate(struct.unpack("<I", head[vorbis + 12 : vorbis + 16])[0], "Vorbis")
    flac = head.find(b"\x7fFLAC")  # Ogg FLAC: version and header count, then fLaC
    if flac != -1:
        return _flac_seconds(head[flac + 9 :])
    return None


def _mp4_box(data: bytes, kind: bytes) -> bytes | None:
    """The content of the first box of type ``kind`` at the top level of ``data``."""
    pos = 0
    while pos + 8 <= len(data):
        size, box = struct.unpack(">I4s", data[pos : pos + 8])
        header = 8
        if size == 1 and pos + 16 <= len(data):  # a 64-bit size follows the type
            size, header = struct.unpack(">Q", data[pos + 8 : pos + 16])[0], 16
        elif size == 0:  # the box runs to the end
            size = len(data) - pos
        if size < header:
            return None
        if box == kind:
            return data[pos + header : pos + size]
        pos += size
    return None


def _mp4_seconds(data: bytes) -> float | None:
    """The movie header's duration (``moov/mvhd``: version 0 has 32-bit times, 1 64-bit)."""
    moov = _mp4_box(data, b"moov")
    mvhd = _mp4_box(moov, b"mvhd") if moov is not None else None
    if mvhd is None:
        return None
    if mvhd[:1] == b"\x01" and len(mvhd) >= 32:
        timescale, duration = struct.unpack(">IQ", mvhd[20:32])
    elif mvhd[:1] == b"\x00" and len(mvhd) >= 20:
        timescale, duration = struct.unpack(">II", mvhd[12:20])
        duration = 0 if duration == 0xFFFFFFFF else duration  # unknown
    else:
        return None
    return duration / timescale if timescale and duration else None


def header_seconds(demuxer: str, head: bytes, file_size: int) -> float | None:
    """The length of the audio as the file's header states it (WAV, FLAC, Ogg FLAC, MP4),
    None where it does not say; refuses impossible values (0 channels, unknown sample sizes)
    and sample rates outside MIN_SAMPLE_RATE..MAX_SAMPLE_RATE (WAV, FLAC, Vorbis)."""
    if demuxer == "wav":
        return _wav_seconds(head, file_size)
    if demuxer == "flac":
        return _flac_seconds(head)
    if demuxer == "ogg":
        return _ogg_seconds(head[:4096])
    if demuxer == "mov":
        return _mp4_seconds(head)
    return None


# --- ffmpeg ----------------------------------------------------------------------------------


def audio_decode(file: AudioFile, *, max_seconds: float | None = None) -> bytes:
    """The uploaded audio as PCM16LE mono at 16 kHz (blocking: ffmpeg runs).

    At most ``max_seconds`` of it (default PARLEY_STT_MAX_SECONDS): a header that promises
    more is refused before decoding, and ffmpeg stops a second past the limit, so a small
    compressed file cannot expand to hours. ffmpeg reads a file, not a pipe: an MP4 whose
    index is at its end needs to seek. An upload held in memory is written to a temporary
    file first.
    Raises ApiError (400, field ``file``) when it is not audio ffmpeg decodes, or too long.
    """
    limit = settings.PARLEY_STT_MAX_SECONDS if max_seconds is None else max_seconds
    if file.path is not None:
        return _decode_path(file.path, filename=file.name, limit=limit)
    with tempfile.NamedTemporaryFile(prefix="parley-stt-", suffix=".audio") as temp:
        temp.write(file.content)
        temp.flush()
        return _decode_path(Path(temp.name), filename=file.name, limit=limit)


def _ffmpeg_reason(stderr: bytes, path: Path) -> str:
    """What ffmpeg said: its first error line (the cause) and its last (the outcome)."""
    lines = [
        _FFMPEG_CONTEXT.sub("", " ".join(line.split())).replace(str(path), "the file")
        for line in stderr.decode(errors="replace").splitlines()
        if line.strip()
    ]
    if not lines:
        return "ffmpeg failed"
    if any("does not contain any stream" in line for line in lines):
        return "it has no audio stream"
    return lines[0] if lines[0] == lines[-1] else f"{lines[0]} ({lines[-1]})"


def _decode_path(path: Path, *, filename: str, limit: float) -> bytes:
    with open(path, "rb") as source:
        head = source.read(65536)
        if head[4:8] == b"ftyp":  # an MP4's codec may be described at its end
            head += source.read()
    hint = sniff_audio(head, filename)
    if hint is None:
        raise _decode_error(f"not a recognised audio file (send {AUDIO_KINDS}).")
    demuxer, codec = hint
    seconds = header_seconds(demuxer, head, path.stat().st_size)
    if seconds is not None and seconds > limit:
        raise _too_long(f"The audio is {seconds:.1f} s long (its header says)", limit)
    # The demuxer is forced (never probed: no playlist or concat demuxer opens other files),
    # and so is the decoder (the wheel has no ffprobe to name it). ffmpeg downmixes, resamples
    # with soxr and writes raw PCM16 mono 16 kHz, for at most a second past the limit.
    command = [
        ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error",
        "-f", demuxer, "-c:a", codec, "-i", str(path),
        "-vn", "-sn", "-dn", "-af", f"aresample={SAMPLE_RATE}:resampler=soxr", "-ac", "1",
        "-t", f"{limit + 1:.3f}", "-f", "s16le", "-c:a", "pcm_s16le", "pipe:1",
    ]  # fmt: skip
    try:
        done = subprocess.run(
            command, capture_output=True, stdin=subprocess.DEVNULL, timeout=DECODE_TIMEOUT_S
        )
    except subprocess.TimeoutExpired as exc:
        raise _decode_error(f"ffmpeg took over {DECODE_TIMEOUT_S:g} s on it.") from exc
    if done.returncode != 0 or (not done.stdout and done.stderr.strip()):
        reason = _ffmpeg_reason(done.stderr, path)
        raise _decode_error(f"ffmpeg read it as {demuxer} ({codec}) and said: {reason}"[:500])
    if len(done.stdout) > limit * BYTES_PER_SECOND:
        raise _too_long(f"The audio is over {limit:g} s long", limit)
    return done.stdout


# --- the service ---------------------------------------------------------------------------


def _engine_error(exc: SttError) -> ApiError:
    """The engine's refusal in the API's terms (the codes docs/speech.md uses for TTS)."""
    detail = exc.detail or "The speech-to-text engine failed."
    if isinstance(exc, SttUnavailable):  # the model picked an engine that cannot run here
        return ApiError("engine_unavailable", detail, field="model", status_code=503)
    if exc.code == "unsupported_language":
        return ApiError("unsupported_language", detail, field="language")
    return ApiError("transcription_failed", detail, status_code=502)


async def transcription_create(
    *,
    fields: Mapping[str, Any],
    file: AudioFile | None,
    granularities: Sequence[str] = (),
) -> TranscriptionResult:
    """Validate, decode ``file`` and transcribe it with the engine ``model`` names.

    Every refusal is an ApiError: 400 for the request (and for audio over
    PARLEY_STT_MAX_SECONDS), 413 never here (the view enforces the size while parsing), 503
    when the engine cannot run, 502 when it failed.
    """
    if file is None:
        raise ApiError("missing_file", "file is required: the audio to transcribe.", field="file")
    request = transcription_request(fields, granularities=granularities)
    if file.size == 0:
        raise ApiError("empty_file", "file is empty.", field="file")
    try:
        engine = get_stt(request.engine)
        engine.check_language(request.language)  # e.g. tiny.en: English only
    except SttError as exc:
        raise _engine_error(exc) from exc
    pcm = await asyncio.to_thread(audio_decode, file)
    duration_s = len(pcm) / BYTES_PER_SECOND
    if duration_s < MIN_AUDIO_S:
        raise ApiError(
            "audio_too_short",
            f"The audio is {duration_s:.3f} s long; the minimum is {MIN_AUDIO_S} s.",
            field="file",
        )
    try:
        transcript = await engine.transcribe(
            pcm,
            sample_rate=SAMPLE_RATE,
            language=request.language,
            prompt=request.prompt,
            timestamps=request.wants_segments,
        )
    except SttError as exc:
        raise _engine_error(exc) from exc
    return TranscriptionResult(request=request, transcript=transcript, duration_s=duration_s)


# --- rendering -----------------------------------------------------------------------------


def duration_usage(duration_s: float) -> dict[str, Any]:
    """OpenAI's usage for duration-billed models: whole seconds of input audio, rounded up."""
    return {"type": "duration", "seconds": math.ceil(round(duration_s, 6))}


def token_usage(text: str, duration_s: float, prompt: str | None = None) -> dict[str, Any]:
    """OpenAI's token usage (what ``transcript.text.done`` carries), counted as
    docs/speech.md counts speech's: one audio token per started 20 ms of input audio, one
    text token per word or punctuation mark of the prompt (input) and transcript (output)."""
    audio = usage_for("", round(duration_s * BYTES_PER_SECOND), SAMPLE_RATE)["output_tokens"]
    prompt_tokens = usage_for(prompt or "", 0, 0)["input_tokens"]
    output = usage_for(text, 0, 0)["input_tokens"]
    return {
        "type": "tokens",
        "input_tokens": audio + prompt_tokens,
        "input_token_details": {"audio_tokens": audio, "text_tokens": prompt_tokens},
        "output_tokens": output,
        "total_tokens": audio + prompt_tokens + output,
    }


def transcript_segments(transcript: Transcript, duration_s: float) -> tuple[Segment, ...]:
    """The transcript's segments; one spanning the whole audio (``duration_s`` unless the
    transcript knows better) when the engine gave none."""
    if transcript.segments:
        return transcript.segments
    text = transcript.text.strip()
    end = transcript.duration_s or duration_s
    return (Segment(0.0, round(end, 3), text),) if text else ()


def _clock(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def srt_timestamp(seconds: float) -> str:
    """SubRip time: ``HH:MM:SS,mmm`` (hours past 99 keep all their digits)."""
    return _clock(seconds, ",")


def vtt_timestamp(seconds: float) -> str:
    """WebVTT time: ``HH:MM:SS.mmm``."""
    return _clock(seconds, ".")


def srt_document(segments: Iterable[Segment]) -> str:
    """A SubRip file: numbered cues from 1, ``start --> end``, the text, a blank line."""
    cues = [
        f"{number}\n{srt_timestamp(s.start_s)} --> {srt_timestamp(s.end_s)}\n{s.text.strip()}\n"
        for number, s in enumerate(segments, start=1)
    ]
    return "\n".join(cues)


def vtt_document(segments: Iterable[Segment]) -> str:
    """A WebVTT file: the ``WEBVTT`` line, a blank line, then one cue per segment."""
    cues = [
        f"{vtt_timestamp(s.start_s)} --> {vtt_timestamp(s.end_s)}\n{s.text.strip()}\n"
        for s in segments
    ]
    return "WEBVTT\n\n" + "\n".join(cues)


def language_name(code: str) -> str:
    """Whisper's name of a language code ("en" -> "english"); unknown codes unchanged."""
    return LANGUAGES.get(code.lower(), code) if code else code


def verbose_json(transcript: Transcript, duration_s: float) -> dict[str, Any]:
    """OpenAI's ``verbose_json`` body: task, language (a name), duration, text, segments."""
    duration = transcript.duration_s or duration_s
    return {
        "task": "transcribe",
        "language": language_name(transcript.language),
        "duration": round(duration, 3),
        "text": transcript.text,
        "segments": [
            {"id": index, "start": round(s.start_s, 3), "end": round(s.end_s, 3), "text": s.text}
            for index, s in enumerate(transcript_segments(transcript, duration))
        ],
        "usage": duration_usage(duration),
    }


def transcription_body(result: TranscriptionResult) -> tuple[str | dict[str, Any], str]:
    """The response body (a dict for the JSON formats) and its content type."""
    transcript, fmt = result.transcript, result.request.response_format
    content_type = CONTENT_TYPES[fmt]
    if fmt == "json":
        body = {"text": transcript.text, "usage": duration_usage(result.duration_s)}
        return body, content_type
    if fmt == "verbose_json":
        return verbose_json(transcript, result.duration_s), content_type
    if fmt == "text":
        return transcript.text + "\n", content_type
    segments = transcript_segments(transcript, result.duration_s)
    return (srt_document(segments) if fmt == "srt" else vtt_document(segments)), content_type


def text_deltas(text: str) -> list[str]:
    """``text`` cut word by word; the pieces concatenate back to exactly ``text``."""
    pieces = _DELTA.findall(text)
    rest = len("".join(pieces))
    if rest < len(text):  # trailing whitespace goes with the last word
        pieces = [*pieces[:-1], (pieces[-1] if pieces else "") + text[rest:]]
    return pieces


def sse_event(data: Mapping[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def transcription_events(result: TranscriptionResult) -> AsyncIterator[str]:
    """OpenAI's streaming transcription events: ``transcript.text.delta`` for each word of
    the (already complete) transcript, then ``transcript.text.done`` with the text and usage.
    The engines do not stream, so the deltas only start once the whole audio is transcribed.
    """
    text = result.transcript.text
    for delta in text_deltas(text):
        yield sse_event({"type": "transcript.text.delta", "delta": delta})
        await asyncio.sleep(0)  # one event per write, and room to notice a disconnect
    usage = token_usage(text, result.duration_s, result.request.prompt)
    yield sse_event({"type": "transcript.text.done", "text": text, "usage": usage})
