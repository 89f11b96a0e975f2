"""Voices: the engines' own, OpenAI's names (aliases), and stored ones (a preset or a sample).

A stored voice is a Voice row; its sample file lives in MEDIA_ROOT/voices/. A request's
``voice`` may name any of them (speech.services resolves stored voices first for names that
are not OpenAI's), so stored names may not shadow an OpenAI or engine voice.
"""

from __future__ import annotations

import asyncio
import io
import re
import subprocess
import wave
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, transaction

from speech import encoding
from speech.models import Voice, VoiceAlias
from speech.params import FieldSpec, parse_fields
from speech.services import engine_for, get_registry, synthesis_stream
from speech.tts import OPENAI_VOICE_TO_ESPEAK, TTSEngine, TTSError, VoiceNotFound, VoiceSample
from streams.errors import ApiError, Conflict
from streams.runtime import runtime

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# Paths under /v1/voices/ that are not voices (speech.urls): no voice or alias may take them.
RESERVED_NAMES = frozenset({"default", "all-names"})
PREVIEW_TEXT = "Hello! This is the voice {name}, speaking through Parley."
# Sample analysis: decode to 16 kHz mono to prove it is audio and measure it.
_PROBE_RATE = 16000

_FIELDS = (
    FieldSpec("engine", "str", max_length=64, description="blank: the default engine"),
    FieldSpec("preset", "str", max_length=128, description="the engine's voice id"),
    FieldSpec("language", "str", max_length=32),
    FieldSpec("description", "str", max_length=2000),
)
CREATE_FIELDS = (FieldSpec("name", "str", required=True, max_length=64), *_FIELDS)
UPDATE_FIELDS = (FieldSpec("name", "str", max_length=64), *_FIELDS)


def voice_sample_from_upload(upload: UploadedFile) -> VoiceSample:
    limit = settings.PARLEY_TTS_MAX_VOICE_BYTES
    if upload.size is not None and upload.size > limit:
        raise ApiError(
            "voice_file_too_large",
            f"voice_file is {upload.size} bytes; the limit is {limit}.",
            field="voice_file",
            status_code=413,
        )
    content = upload.read()
    if not content:
        raise ApiError("invalid_voice_file", "voice_file is empty.", field="voice_file")
    return VoiceSample(
        content=content,
        # The record keeps 255 characters: keep the end, where the extension is.
        filename=Path(upload.name or "voice.wav").name[-255:],
        content_type=upload.content_type or "application/octet-stream",
    )


def _probe_seconds(content: bytes) -> float:
    """Seconds of audio in ``content``; ApiError if ffmpeg cannot decode it."""
    result = subprocess.run(
        [
            encoding.ffmpeg_exe(),
            *("-hide_banner", "-nostats", "-loglevel", "error", "-i", "pipe:0"),
            *("-f", "s16le", "-ac", "1", "-ar", str(_PROBE_RATE), "pipe:1"),
        ],
        input=content,
        capture_output=True,
        timeout=30,
        check=False,
    )
    if result.returncode != 0 or not result.stdout:
        reason = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise ApiError(
            "invalid_voice_file",
            "voice_file is not audio that ffmpeg can decode"
            + (f": {reason[-1]}" if reason else "."),
            field="voice_file",
        )
    return len(result.stdout) / (2 * _PROBE_RATE)


# --- listing -------------------------------------------------------------------------------


def _stored_dict(voice: Voice) -> dict[str, Any]:
    sample = None
    if voice.sample:
        sample = {
            "filename": voice.sample_filename,
            "content_type": voice.sample_content_type,
            "bytes": voice.sample_bytes,
            "seconds": voice.sample_seconds,
        }
    return {
        "name": voice.name,
        "source": "stored",
        "kind": voice.kind,
        "engine": voice.engine or get_registry().default_name,
        "engine_voice": voice.preset or None,
        "language": voice.language,
        "gender": None,
        "description": voice.description,
        "sample": sample,
        "download_url": f"/v1/voices/{voice.name}/download",
        "created_at": voice.created_at.isoformat(),
        "updated_at": voice.updated_at.isoformat(),
    }


async def _engines() -> list[tuple[str, TTSEngine | None, str]]:
    """(name, engine or None, why unavailable) for each configured engine."""
    registry = get_registry()
    found: list[tuple[str, TTSEngine | None, str]] = []
    for name in registry.names():
        try:
            found.append((name, await engine_for(registry, name), ""))
        except (TTSError, Exception) as error:  # listing must not fail for one broken engine
            found.append((name, None, str(error)))
    return found


def _engine_voices(name: str, engine: TTSEngine) -> list[dict[str, Any]]:
    return [
        {
            "name": info.id,
            "source": "engine",
            "kind": "engine",
            "engine": name,
            "engine_voice": info.id,
            "language": info.language,
            "gender": info.gender,
            "description": info.name,
            "sample": None,
            "download_url": f"/v1/voices/{info.id}/download",
        }
        for info in engine.voices()
    ]


def _openai_aliases(engine_name: str) -> list[dict[str, Any]]:
    registry = get_registry()
    return [
        {
            "name": alias,
            "source": "openai",
            "kind": "alias",
            "engine": engine_name,
            "engine_voice": registry.map_voice(engine_name, alias),
            "language": "en",
            "gender": None,
            "description": f"OpenAI voice name, mapped onto {engine_name}",
            "sample": None,
            "download_url": f"/v1/voices/{alias}/download",
        }
        for alias in OPENAI_VOICE_TO_ESPEAK
    ]


async def voice_list(*, engine: str | None = None) -> dict[str, Any]:
    registry = get_registry()
    if engine is not None and engine not in registry.names():
        raise ApiError(
            "unknown_engine",
            f"Unknown engine {engine!r}; configured: {', '.join(registry.names())}.",
            field="engine",
        )
    stored = await runtime.run_db(lambda: [_stored_dict(v) for v in Voice.objects.all()])
    listed: list[dict[str, Any]] = []
    if engine is None:
        listed += _openai_aliases(registry.default_name)
    listed += [v for v in stored if engine is None or v["engine"] == engine]
    unavailable = {}
    for name, built, why in await _engines():
        if engine is not None and name != engine:
            continue
        if built is None:
            unavailable[name] = why
            continue
        listed += _engine_voices(name, built)
    return {
        "voices": listed,
        "count": len(listed),
        "default_engine": registry.default_name,
        "unavailable_engines": unavailable,
    }


async def voice_detail(name: str) -> dict[str, Any]:
    stored = await runtime.run_db(lambda: Voice.objects.filter(name=name).first())
    if stored is not None:
        return _stored_dict(stored)
    for voice in (await voice_list())["voices"]:
        if voice["name"] == name:
            return voice
    raise _not_found(name)


def _not_found(name: str) -> ApiError:
    return ApiError("voice_not_found", f"No voice named {name!r}.", field="name", status_code=404)


# --- writes --------------------------------------------------------------------------------


async def _check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ApiError(
            "invalid_name",
            "name must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit.",
            field="name",
        )
    if name in RESERVED_NAMES:
        raise ApiError(
            "invalid_name", f"{name!r} is reserved: /v1/voices/{name} is a route.", field="name"
        )
    if name in OPENAI_VOICE_TO_ESPEAK:
        raise Conflict("voice_exists", f"{name!r} is an OpenAI voice name.", field="name")
    if await runtime.run_db(lambda: VoiceAlias.objects.filter(alias=name).exists()):
        raise Conflict("voice_exists", f"{name!r} is an alias of a stored voice.", field="name")
    for engine_name, built, _ in await _engines():
        if built is not None and name in {info.id for info in built.voices()}:
            raise Conflict(
                "voice_exists", f"{name!r} is a voice of engine {engine_name!r}.", field="name"
            )


async def _check_preset(engine_name: str, preset: str) -> None:
    registry = get_registry()
    try:
        built = await engine_for(registry, engine_name or registry.default_name)
        built.check_request(voice=preset)
    except VoiceNotFound:
        raise ApiError(
            "unknown_preset",
            f"Engine {engine_name or registry.default_name!r} has no voice {preset!r}.",
            field="preset",
        ) from None
    except TTSError as error:
        raise ApiError("engine_unavailable", str(error), field="engine", status_code=503) from None


async def _check_clones(engine_name: str, *, field: str) -> None:
    """A sample voice is only usable by an engine that clones: refuse it when it is stored,
    rather than accept it and fail each time it is used."""
    registry = get_registry()
    name = engine_name or registry.default_name
    try:
        built = await engine_for(registry, name)
    except TTSError as error:
        raise ApiError("engine_unavailable", str(error), field="engine", status_code=503) from None
    if not built.capabilities.voice_cloning:
        raise ApiError(
            "voice_cloning_unsupported",
            f"Engine {name!r} cannot clone a voice from a sample, so a sample voice for it "
            "could never speak. Set engine to one that clones (GET /v1/models: "
            "voice_cloning), or give a preset (an engine voice id) instead of a voice_file.",
            field=field,
            status_code=422,
        )


def _check_engine(engine_name: str) -> None:
    names = get_registry().names()
    if engine_name and engine_name not in names:
        raise ApiError(
            "unknown_engine",
            f"Unknown engine {engine_name!r}; configured: {', '.join(names)}.",
            field="engine",
        )


def _attach_sample(voice: Voice, sample: VoiceSample, seconds: float) -> None:
    if voice.sample:
        voice.sample.delete(save=False)
    voice.sample.save(sample.filename, ContentFile(sample.content), save=False)
    voice.sample_filename = sample.filename
    voice.sample_content_type = sample.content_type
    voice.sample_bytes = len(sample.content)
    voice.sample_seconds = round(seconds, 3)
    voice.preset = ""


def _save(voice: Voice) -> dict[str, Any]:
    try:
        with transaction.atomic():
            voice.save()
    except IntegrityError:
        raise Conflict(
            "voice_exists", f"A voice named {voice.name!r} exists.", field="name"
        ) from None
    return _stored_dict(voice)


async def voice_create(
    *, fields: dict[str, Any], sample: VoiceSample | None, from_form: bool
) -> dict[str, Any]:
    values = parse_fields(fields, CREATE_FIELDS, from_form=from_form, ignore=("voice_file",)).values
    name, preset, engine_name = values["name"], values["preset"] or "", values["engine"] or ""
    _check_engine(engine_name)
    if (sample is None) == (not preset):
        raise ApiError(
            "invalid_voice",
            "Give either a voice_file (a sample to clone) or a preset (an engine voice id).",
            field="voice_file" if sample is None else "preset",
        )
    await _check_name(name)
    seconds = 0.0
    if sample is not None:
        await _check_clones(engine_name, field="voice_file")
        seconds = await asyncio.to_thread(_probe_seconds, sample.content)
    else:
        await _check_preset(engine_name, preset)
    voice = Voice(
        name=name,
        engine=engine_name,
        preset=preset,
        language=values["language"] or "",
        description=values["description"] or "",
    )
    if sample is not None:
        _attach_sample(voice, sample, seconds)

    def create() -> dict[str, Any]:
        if Voice.objects.filter(name=name).exists():
            raise Conflict("voice_exists", f"A voice named {name!r} exists.", field="name")
        return _save(voice)

    try:
        return await runtime.run_db(create)
    except ApiError:
        if voice.sample:
            voice.sample.delete(save=False)
        raise


async def voice_update(
    *, name: str, fields: dict[str, Any], sample: VoiceSample | None, from_form: bool
) -> dict[str, Any]:
    parsed = parse_fields(fields, UPDATE_FIELDS, from_form=from_form, ignore=("voice_file",))
    values, given = parsed.values, parsed.given
    voice = await runtime.run_db(lambda: Voice.objects.filter(name=name).first())
    if voice is None:
        raise _not_found(name)
    if "name" in given and values["name"] != voice.name:
        await _check_name(values["name"])
        voice.name = values["name"]
    if "engine" in given:
        _check_engine(values["engine"])
        voice.engine = values["engine"]
    for key in ("language", "description"):
        if key in given:
            setattr(voice, key, values[key])
    if sample is not None and "preset" in given:
        raise ApiError(
            "invalid_voice", "Give either a voice_file or a preset, not both.", field="preset"
        )
    if sample is not None:
        await _check_clones(voice.engine, field="voice_file")
        seconds = await asyncio.to_thread(_probe_seconds, sample.content)
        _attach_sample(voice, sample, seconds)
    elif "preset" in given:
        await _check_preset(voice.engine, values["preset"])
        voice.preset = values["preset"]
        if voice.sample:
            voice.sample.delete(save=False)
            voice.sample = None
            voice.sample_filename = voice.sample_content_type = ""
            voice.sample_bytes, voice.sample_seconds = 0, None
    elif voice.sample and "engine" in given:
        await _check_clones(voice.engine, field="engine")  # a sample stays a sample
    elif not voice.preset and not voice.sample:
        raise ApiError("invalid_voice", "A voice needs a preset or a sample.", field="preset")
    return await runtime.run_db(_save, voice)


async def voice_delete(*, name: str) -> None:
    def delete() -> bool:
        voice = Voice.objects.filter(name=name).first()
        if voice is None:
            return False
        if voice.sample:
            voice.sample.delete(save=False)
        voice.delete()
        return True

    if await runtime.run_db(delete):
        return
    if name in OPENAI_VOICE_TO_ESPEAK or any(v["name"] == name for v in await _builtin(name)):
        raise Conflict(
            "read_only_voice", f"{name!r} is a built-in voice and cannot be deleted.", field="name"
        )
    raise _not_found(name)


async def _builtin(name: str) -> list[dict[str, Any]]:
    found = []
    for engine_name, built, _ in await _engines():
        if built is not None:
            found += [v for v in _engine_voices(engine_name, built) if v["name"] == name]
    return found


# --- download ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Download:
    filename: str
    content_type: str
    content: bytes


# Rendered previews, least recently used first, keyed by the voice's name and identity:
# a preview is the same bytes (and ETag) every time, so ranges and If-Range hold across
# requests, and a repeated GET or HEAD costs no synthesis. Per process; bounded.
PREVIEW_CACHE_SIZE = 32
_PREVIEWS: OrderedDict[tuple[Any, ...], Download] = OrderedDict()
# Previews being rendered: concurrent requests for one voice share a single synthesis.
_RENDERING: dict[tuple[Any, ...], asyncio.Future[Download]] = {}


def clear_preview_cache() -> None:
    """Forget every rendered preview (tests; a voice's change needs no call: see the key)."""
    _PREVIEWS.clear()


async def voice_download(name: str) -> Download:
    """A stored sample as uploaded; otherwise a short WAV preview of a preset, engine or
    OpenAI voice, rendered once per voice identity (name, default engine, and for a stored
    voice its id, engine, preset and updated time) and then served from a bounded LRU.
    Raises ApiError `voice_not_found` (404) for an unknown name."""
    stored = await runtime.run_db(lambda: Voice.objects.filter(name=name).first())
    if stored is not None and stored.sample:
        return Download(
            stored.sample_filename or Path(stored.sample.name).name,
            stored.sample_content_type or "application/octet-stream",
            await asyncio.to_thread(Path(stored.sample.path).read_bytes),
        )
    model = None
    if stored is None and name not in OPENAI_VOICE_TO_ESPEAK:
        builtin = await _builtin(name)
        if not builtin:
            raise _not_found(name)
        model = builtin[0]["engine"]
    identity = (stored.pk, stored.engine, stored.preset, stored.updated_at) if stored else (model,)
    key = (name, settings.PARLEY_TTS_ENGINE, *identity)
    cached = _PREVIEWS.get(key)
    if cached is not None:
        _PREVIEWS.move_to_end(key)
        return cached
    pending = _RENDERING.get(key)
    if pending is None:
        pending = asyncio.ensure_future(_render_preview(name, model))
        _RENDERING[key] = pending
        pending.add_done_callback(lambda task: _rendered(key, task))
    # Shielded: a client leaving mid-render does not cancel it for the others waiting.
    return await asyncio.shield(pending)


def _rendered(key: tuple[Any, ...], task: asyncio.Future[Download]) -> None:
    _RENDERING.pop(key, None)
    if task.cancelled() or task.exception() is not None:  # retrieved: no "never retrieved"
        return
    _PREVIEWS[key] = task.result()
    while len(_PREVIEWS) > PREVIEW_CACHE_SIZE:
        _PREVIEWS.popitem(last=False)


async def _render_preview(name: str, model: str | None) -> Download:
    pcm = bytearray()
    rate = 0
    chunks = synthesis_stream(
        text=PREVIEW_TEXT.format(name=name),
        model=model,
        voice=name,
        job_kind="preview",
        endpoint=f"/v1/voices/{name}/download",
        response_format="wav",
    )
    async for chunk in chunks:
        pcm += chunk.pcm
        rate = chunk.job.sample_rate
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate or 22050)
        wav.writeframes(bytes(pcm))
    return Download(f"{name}-preview.wav", "audio/wav", buffer.getvalue())
