"""The WS /v1/audio/speech/ws message contract: parse and validate what a client sends.

Text frames are JSON objects with a ``type``. Every refusal is a
``streams.errors.ApiError`` with a ``code`` (the speech API's own codes where the field is
the same: ``invalid_speed``, ``voice_not_found``, ...), a ``detail`` a person can act on and
the ``field`` at fault; the session answers it with an ``error`` frame and goes on. The
session's settings are the speech request's fields (``speech.params``), minus ``input`` and
``stream_format``, plus this surface's own (``audio_transport``, ``max_sentence_chars``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from speech.params import KNOB_NAMES, RESPONSE_FORMATS, SPEECH_FIELDS, FieldSpec, parse_fields
from streams.errors import ApiError, echoed

__all__ = [
    "CLIENT_TYPES",
    "FORMAT_FIELDS",
    "SESSION_FIELDS",
    "SessionConfig",
    "check_text",
    "config_from",
    "parse_frame",
]

CLIENT_TYPES = ("session.update", "input_text.append", "input_text.flush", "cancel", "end")
WS_FORMATS = ("pcm", "wav")
TRANSPORTS = ("binary", "base64")
DEFAULT_PCM_RATE = 24000  # OpenAI's pcm rate, as on POST /v1/audio/speech

_SPEECH = {spec.name: spec for spec in SPEECH_FIELDS}
SESSION_FIELDS: tuple[FieldSpec, ...] = (
    _SPEECH["model"],
    _SPEECH["voice"],
    FieldSpec(
        "response_format",
        "str",  # checked below: the HTTP API's other formats get their own answer
        "pcm",
        max_length=16,
        description="pcm (raw PCM16LE mono) or wav (the same, after one streamed WAV header)",
    ),
    _SPEECH["speed"],
    _SPEECH["sample_rate"],
    FieldSpec("audio_transport", "enum", "binary", choices=TRANSPORTS),
    FieldSpec("max_sentence_chars", "int", 250, 50, 4096),
    *(spec for spec in SPEECH_FIELDS if spec.name in KNOB_NAMES),
)
SESSION_FIELD_NAMES = frozenset(spec.name for spec in SESSION_FIELDS)
# Fixed once text was sent: a player cannot change its rate or container mid-stream.
FORMAT_FIELDS = ("response_format", "sample_rate", "audio_transport")


@dataclass(frozen=True)
class SessionConfig:
    """What the next pieces are synthesized with. ``sample_rate`` None: the format's default
    (24 kHz for pcm, the engine's for wav), settled when the session's voice is checked."""

    model: str | None = None
    voice: str | None = None
    response_format: str = "pcm"
    speed: float = 1.0
    sample_rate: int | None = None
    audio_transport: str = "binary"
    max_sentence_chars: int = 250
    knobs: dict[str, Any] = field(default_factory=dict)  # only those the client sent

    def as_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "voice": self.voice,
            "response_format": self.response_format,
            "speed": self.speed,
            "sample_rate": self.sample_rate,
            "audio_transport": self.audio_transport,
            "max_sentence_chars": self.max_sentence_chars,
            **self.knobs,
        }


def config_from(
    data: Mapping[str, Any],
    base: SessionConfig,
    *,
    from_query: bool = False,
    locked: bool = False,
) -> SessionConfig:
    """``base`` with the fields of ``data`` applied, all validated before any is applied.

    ``from_query``: values are strings (the handshake's query string; ``api_key`` is not a
    setting). ``locked``: text was sent already, so the format fields are refused
    (``format_locked``). Raises ApiError naming the field.
    """
    ignore = ("api_key",) if from_query else ()
    parsed = parse_fields(data, SESSION_FIELDS, from_form=from_query, ignore=ignore)
    values, given = parsed.values, parsed.given
    if locked:
        for name in FORMAT_FIELDS:
            if name in given and values[name] != getattr(base, name):
                raise ApiError(
                    "format_locked",
                    f"{name} cannot change once text was sent (the audio already has its "
                    "format); open a new session for another one.",
                    field=name,
                )
    if "response_format" in given and values["response_format"] not in WS_FORMATS:
        value = values["response_format"]
        other = (
            "; the compressed formats are offered by POST /v1/audio/speech"
            if value in RESPONSE_FORMATS
            else ""
        )
        raise ApiError(
            "invalid_response_format",
            f"response_format must be one of {', '.join(WS_FORMATS)}; got {echoed(value)}{other}.",
            field="response_format",
        )
    changes: dict[str, Any] = {
        name: values[name]
        for name in given
        if name not in KNOB_NAMES and name in SESSION_FIELD_NAMES
    }
    knobs = {**base.knobs, **{name: values[name] for name in given if name in KNOB_NAMES}}
    return replace(base, **changes, knobs=knobs)


def parse_frame(raw: str) -> tuple[str, dict[str, Any]]:
    """A text frame's ``(type, body)``; raises ApiError for bad JSON or an unknown type."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ApiError("invalid_json", "The frame is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError("invalid_json", "A frame must be a JSON object with a type.")
    kind = body.get("type")
    if not isinstance(kind, str):
        raise ApiError("missing_field", "type is required (a string).", field="type")
    if kind not in CLIENT_TYPES:
        raise ApiError(
            "unknown_type",
            f"Unknown type {echoed(kind)}; expected one of: {', '.join(CLIENT_TYPES)}.",
            field="type",
        )
    return kind, body


def only_fields(body: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    """Refuse a field this frame type does not have (never ignored)."""
    for name in body:
        if name != "type" and name not in allowed:
            known = ", ".join(allowed) if allowed else "none besides type"
            raise ApiError(
                "unknown_field",
                f"{body['type']} has no field {echoed(str(name))}; its fields: {known}.",
                field=str(name)[:64],
            )


def check_text(value: Any, *, limit: int) -> str:
    """``text`` of an append: a string of at most ``limit`` characters, no NUL (neither the
    engines' C strings nor PostgreSQL take one), no lone surrogate. Raises ApiError."""
    if value is None:
        raise ApiError("missing_field", "text is required (a string).", field="text")
    if not isinstance(value, str):
        raise ApiError("invalid_text", "text must be a string.", field="text")
    if len(value) > limit:
        raise ApiError(
            "text_too_long",
            f"text must be at most {limit} characters per frame, got {len(value)}; send "
            "longer text in several input_text.append frames.",
            field="text",
        )
    if "\x00" in value:
        raise ApiError("invalid_text", "text must not contain NUL characters.", field="text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(
            "invalid_text",
            "text must be valid Unicode text (it has a lone surrogate).",
            field="text",
        ) from None
    return value


def check_bool(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise ApiError(f"invalid_{name}", f"{name} must be true or false.", field=name)
    return value
