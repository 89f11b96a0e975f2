"""The speech request fields: one table drives validation, defaults and the OpenAPI schema.

Field names, ranges and defaults are the contract of the streaming TTS seed (002) plus
OpenAI's ``/v1/audio/speech``. Values arrive as JSON (typed) or multipart form fields
(strings): ``parse_fields`` accepts both and answers the first problem as an ApiError that
names the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from streams.errors import ApiError

RESPONSE_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
STREAM_FORMATS = ("audio", "sse")
STRATEGIES = ("sentence", "paragraph", "fixed", "word", "adaptive")
QUALITIES = ("fast", "balanced", "high")
MAX_INPUT_CHARS = 4096
# Multi-voice input: at most this many segments, MAX_INPUT_CHARS in all.
MAX_SEGMENTS = 64
# The segments' texts are joined with this for the job's text, usage and marks' offsets.
SEGMENT_JOINER = "\n\n"
# JSON Schema (ECMA-262) patterns of the text _value accepts.
_TEXT_CHAR = "[^\\x00\\ud800-\\udfff]"
TEXT_PATTERN = f"^{_TEXT_CHAR}*$"
SOME_TEXT_PATTERN = f"^{_TEXT_CHAR}*[^\\s\\x00\\ud800-\\udfff]{_TEXT_CHAR}*$"


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: str  # "str", "float", "int", "enum"
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    max_length: int | None = None
    required: bool = False
    description: str = ""
    # OpenAI's `voice` may also be an object {"id": name} naming a stored (custom) voice.
    id_object: bool = False
    # Over max_length is the server's limit, not a malformed request: 400 `<name>_too_long`
    # (the speech endpoints answer request validation with 422, issue 10).
    length_is_limit: bool = False
    # Multi-voice: the value may also be a list of objects with these fields (JSON only),
    # each naming its own voice; see parse_segments.
    segments: tuple[FieldSpec, ...] = ()

    def openapi(self) -> dict[str, Any]:
        schema = self._openapi()
        if not self.segments:
            return schema
        text = {k: v for k, v in schema.items() if k != "description"}
        return {
            "oneOf": [text, segments_openapi(self.segments)],
            "description": self.description
            + "; or a list of segments, each spoken in its own voice, as one stream",
        }

    def _openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {
            "str": {"type": "string"},
            "enum": {"type": "string", "enum": list(self.choices)},
            "float": {"type": "number"},
            "int": {"type": "integer"},
        }[self.kind]
        if self.low is not None:
            schema["minimum"] = self.low
        if self.high is not None:
            schema["maximum"] = self.high
        if self.max_length is not None:
            schema["maxLength"] = self.max_length
            if self.required:
                schema["minLength"] = 1
        if self.kind == "str":
            # What _value refuses: NUL and lone surrogates anywhere; a required text needs
            # a character that is not whitespace.
            schema["pattern"] = SOME_TEXT_PATTERN if self.required else TEXT_PATTERN
        if self.default is not None:
            schema["default"] = self.default
        if not self.required:
            schema["nullable"] = True  # null, like a missing field, means the default
            if "enum" in schema:
                schema["enum"] = [*schema["enum"], None]  # OpenAPI 3.0: enum must list null
        if self.description:
            schema["description"] = self.description
        if self.id_object:
            by_id = {
                "type": "object",
                "properties": {"id": {k: v for k, v in schema.items() if k != "nullable"}},
                "required": ["id"],
                "additionalProperties": False,
            }
            schema = {"oneOf": [schema, by_id], "description": schema.get("description", "")}
        return schema


def segments_openapi(specs: tuple[FieldSpec, ...]) -> dict[str, Any]:
    """The JSON Schema of a multi-voice input: 1-MAX_SEGMENTS objects of ``specs``."""
    return {
        "type": "array",
        "minItems": 1,
        "maxItems": MAX_SEGMENTS,
        "description": (
            f"Multi-voice: up to {MAX_SEGMENTS} segments spoken in order as one stream, "
            f"{MAX_INPUT_CHARS} characters in all (400 input_too_long beyond). A segment "
            "without voice or model takes the request's."
        ),
        "items": {
            "type": "object",
            "properties": {spec.name: spec.openapi() for spec in specs},
            "required": [spec.name for spec in specs if spec.required],
            "additionalProperties": False,
        },
    }


# The seed's synthesis knobs: the ``params`` of synthesis_stream.
KNOB_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("exaggeration", "float", 0.5, 0.25, 2.0, description="Emotion intensity"),
    FieldSpec("cfg_weight", "float", 0.5, 0.0, 1.0, description="Pace control"),
    FieldSpec("temperature", "float", 0.8, 0.05, 5.0, description="Sampling randomness"),
    FieldSpec(
        "streaming_chunk_size", "int", 200, 50, 500, description="Characters per streaming chunk"
    ),
    FieldSpec(
        "streaming_strategy",
        "enum",
        "sentence",
        choices=STRATEGIES,
        description="How to break up text for streaming",
    ),
    FieldSpec(
        "streaming_buffer_size",
        "int",
        3,
        1,
        10,
        description="Text chunks synthesized ahead of the client",
    ),
    FieldSpec(
        "streaming_quality",
        "enum",
        "balanced",
        choices=QUALITIES,
        description="Speed vs quality: encoder bitrate and resampler quality",
    ),
    FieldSpec(
        "instructions",
        "str",
        max_length=MAX_INPUT_CHARS,
        description="OpenAI gpt-4o-mini-tts style instructions (forwarded by the openai engine)",
    ),
)
KNOB_NAMES = frozenset(spec.name for spec in KNOB_FIELDS)
KNOB_DEFAULTS: dict[str, Any] = {
    spec.name: spec.default for spec in KNOB_FIELDS if spec.default is not None
}

MODEL_FIELD = FieldSpec(
    "model",
    "str",
    max_length=64,
    description="tts-1, tts-1-hd, gpt-4o-mini-tts (the default engine) or an engine name",
)
TEXT_FIELD = FieldSpec(
    "input",
    "str",
    required=True,
    max_length=MAX_INPUT_CHARS,
    description="Text to convert to speech",
    length_is_limit=True,
)
VOICE_FIELD = FieldSpec(
    "voice",
    "str",
    max_length=128,
    description='OpenAI voice name, engine voice id or stored voice name, or {"id": name}',
    id_object=True,
)
# One segment of a multi-voice input: its text, and optionally its own voice and model.
SEGMENT_FIELDS: tuple[FieldSpec, ...] = (
    replace(VOICE_FIELD, description="This segment's voice (default: the request's voice)"),
    replace(TEXT_FIELD, description="This segment's text"),
    replace(
        MODEL_FIELD,
        description="This segment's model or engine (default: the request's model)",
    ),
)

SPEECH_FIELDS: tuple[FieldSpec, ...] = (
    MODEL_FIELD,
    replace(TEXT_FIELD, segments=SEGMENT_FIELDS),
    VOICE_FIELD,
    FieldSpec(
        "response_format",
        "enum",
        "mp3",
        choices=RESPONSE_FORMATS,
        description="Audio format; with stream_format=sse the default is pcm",
    ),
    FieldSpec("speed", "float", 1.0, 0.25, 4.0, description="Speaking rate"),
    FieldSpec("stream_format", "enum", "audio", choices=STREAM_FORMATS),
    FieldSpec(
        "sample_rate",
        "int",
        low=8000,
        high=48000,
        description="Output sample rate (resampled); default: the engine's, or 24000 for pcm",
    ),
    *KNOB_FIELDS,
)
SPEECH_FIELD_NAMES = frozenset(spec.name for spec in SPEECH_FIELDS)


def is_text(value: str) -> bool:
    """False for a string with a lone surrogate (JSON allows "\\ud800"): it cannot be encoded,
    so neither an engine nor the database could take it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _invalid(name: str, detail: str) -> ApiError:
    return ApiError(f"invalid_{name}", detail, field=name)


def _number(spec: FieldSpec, value: Any, *, from_form: bool) -> float | int:
    if isinstance(value, str) and from_form:
        text = value.strip()
        try:
            value = int(text) if spec.kind == "int" else float(text)
        except ValueError:
            kind = "an integer" if spec.kind == "int" else "a number"
            raise _invalid(spec.name, f"{spec.name} must be {kind}, got {text!r}.") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "an integer" if spec.kind == "int" else "a number"
        raise _invalid(spec.name, f"{spec.name} must be {kind}, got {value!r}.")
    if spec.kind == "int":
        if isinstance(value, float):
            if not value.is_integer():
                raise _invalid(spec.name, f"{spec.name} must be an integer, got {value!r}.")
            value = int(value)
    elif not math.isfinite(value):
        raise _invalid(spec.name, f"{spec.name} must be a finite number.")
    else:
        value = float(value)
    if (spec.low is not None and value < spec.low) or (spec.high is not None and value > spec.high):
        raise _invalid(
            spec.name,
            f"{spec.name} must be between {spec.low:g} and {spec.high:g}, got {value:g}.",
        )
    return value


@dataclass(frozen=True)
class Segment:
    """One voice's part of a multi-voice input; None: the request's voice / model."""

    input: str
    voice: str | None = None
    model: str | None = None


def joined_text(segments: Iterable[Segment]) -> str:
    """The whole text of a multi-voice input (the job's text; marks' offsets point into it)."""
    return SEGMENT_JOINER.join(segment.input for segment in segments)


def segment_offsets(segments: Iterable[Segment]) -> list[int]:
    """Where each segment's text starts in :func:`joined_text`."""
    offsets, position = [], 0
    for segment in segments:
        offsets.append(position)
        position += len(segment.input) + len(SEGMENT_JOINER)
    return offsets


def in_segment(error: ApiError, index: int, *, name: str = "input") -> ApiError:
    """``error`` about a field of segment ``index``: its field becomes ``input[2].voice`` and
    its message says which segment."""
    where = f"{name}[{index}]"
    field_path = f"{where}.{error.field}" if error.field else where
    detail = error.detail if error.detail.startswith(where) else f"{where}: {error.detail}"
    # The same class and status (a SynthesisFailed stays one), code and extras.
    moved = type(error).__new__(type(error), detail)
    moved.__dict__.update(vars(error))
    moved.args, moved.field, moved.detail = (detail,), field_path, detail
    return moved


def parse_segments(spec: FieldSpec, value: list[Any]) -> tuple[Segment, ...]:
    """A multi-voice ``input``: 1-MAX_SEGMENTS objects of spec.segments, every error naming
    its segment (``input[2].voice``); MAX_INPUT_CHARS (spec.max_length) in all."""
    name = spec.name
    if not value:
        raise _invalid(name, f"{name} as a list needs at least one segment.")
    if len(value) > MAX_SEGMENTS:
        raise _invalid(name, f"{name} may have at most {MAX_SEGMENTS} segments, got {len(value)}.")
    found = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise ApiError(
                f"invalid_{name}",
                f"{name}[{index}] must be an object like "
                '{"voice": "nova", "input": "Hello."}, '
                f"got {type(item).__name__}.",
                field=f"{name}[{index}]",
            )
        try:
            parsed = parse_fields(item, spec.segments)
        except ApiError as error:
            raise in_segment(error, index, name=name) from None
        found.append(Segment(**parsed.values))
    total = sum(len(segment.input) for segment in found)
    if spec.max_length is not None and total > spec.max_length:
        raise ApiError(
            f"{name}_too_long",
            f"{name} must be at most {spec.max_length} characters in all its segments, "
            f"got {total}.",
            field=name,
        )
    return tuple(found)


def _value(spec: FieldSpec, value: Any, *, from_form: bool) -> Any:
    if spec.segments and isinstance(value, list) and not from_form:
        return parse_segments(spec, value)
    if spec.kind in ("float", "int"):
        return _number(spec, value, from_form=from_form)
    if spec.id_object and isinstance(value, dict):
        if set(value) != {"id"}:
            raise _invalid(
                spec.name,
                f'{spec.name} as an object must be {{"id": <name>}}, '
                f"got keys {sorted(map(str, value))[:8]}.",
            )
        value = value["id"]
    if not isinstance(value, str):
        if spec.segments and not from_form:
            raise _invalid(
                spec.name,
                f"{spec.name} must be a string or a list of segments "
                '({"voice": ..., "input": ...}).',
            )
        raise _invalid(spec.name, f"{spec.name} must be a string.")
    if not is_text(value):
        raise _invalid(spec.name, f"{spec.name} is not valid Unicode text (a lone surrogate).")
    if "\x00" in value:
        # Neither the engines (C strings) nor PostgreSQL's text columns take a NUL.
        raise _invalid(spec.name, f"{spec.name} must not contain NUL characters.")
    if spec.kind == "enum":
        if value not in spec.choices:
            raise _invalid(
                spec.name,
                f"{spec.name} must be one of {', '.join(spec.choices)}; got {value!r}.",
            )
        return value
    if spec.max_length is not None and len(value) > spec.max_length:
        detail = f"{spec.name} must be at most {spec.max_length} characters, got {len(value)}."
        if spec.length_is_limit:
            raise ApiError(f"{spec.name}_too_long", detail, field=spec.name)
        raise _invalid(spec.name, detail)
    if spec.required and not value.strip():
        raise _invalid(spec.name, f"{spec.name} must contain some text.")
    return value


@dataclass
class ParsedFields:
    values: dict[str, Any]  # every field, defaults filled in
    given: set[str] = field(default_factory=set)  # the fields the client actually sent


def parse_fields(
    data: Mapping[str, Any],
    specs: Iterable[FieldSpec] = SPEECH_FIELDS,
    *,
    from_form: bool = False,
    ignore: Iterable[str] = (),
) -> ParsedFields:
    """Validate ``data`` against ``specs``: unknown fields are refused, never ignored."""
    specs = tuple(specs)
    known = {spec.name for spec in specs} | set(ignore)
    for name in data:
        if name not in known:
            raise ApiError(
                "unknown_field",
                f"Unknown field {name!r}; known fields: {', '.join(sorted(known))}.",
                field=name,
            )
    parsed = ParsedFields(values={})
    for spec in specs:
        raw = data.get(spec.name)
        if raw is None or (from_form and raw == "" and not spec.required):
            if spec.required:
                raise ApiError(f"missing_{spec.name}", f"{spec.name} is required.", field=spec.name)
            parsed.values[spec.name] = spec.default
            continue
        parsed.values[spec.name] = _value(spec, raw, from_form=from_form)
        parsed.given.add(spec.name)
    return parsed


def parse_knobs(params: Mapping[str, Any] | None) -> ParsedFields:
    """The seed's knobs given to synthesis_stream (typed values, as from JSON)."""
    return parse_fields(params or {}, KNOB_FIELDS)
