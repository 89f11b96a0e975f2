"""Request and response shapes of the core API (validation and the OpenAPI schema)."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.utils import html
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from streams.audio import (
    BYTES_PER_SAMPLE_RANGE,
    CHANNEL_CHOICES,
    PLAYBACK_SPEED_RANGE,
    SAMPLE_RATE_RANGE,
    FormatError,
    PcmFormat,
)
from streams.errors import ApiError
from streams.gaps import MAX_LISTED
from streams.params import HugeInt, parse_int, parse_number
from streams.services import (
    SPEAKER_RE,
    ChunkIn,
    validate_room_name,
    validate_seq,
    validate_speaker,
    validate_stream_id,
)


class Base64Field(serializers.CharField):
    """Base64 text. Without DRF's surrogate check, a Python loop over every character that
    cost 2.5 % of ingest CPU: base64 decoding rejects anything outside ASCII anyway."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validators = [
            v for v in self.validators if not isinstance(v, ProhibitSurrogateCharactersValidator)
        ]


class ClientIntegerField(serializers.IntegerField):
    """An integer as streams.params reads it: bounded before conversion (no 4300-digit
    ValueError, no `max_string_length` code), `16000.0` is 16000, `1.5` is refused."""

    def to_internal_value(self, data: Any) -> int:
        low = self.min_value if self.min_value is not None else -(2**63)
        high = self.max_value if self.max_value is not None else 2**63 - 1
        try:
            return parse_int(data, field=self.field_name, minimum=low, maximum=high, text=True)
        except ApiError as exc:
            raise serializers.ValidationError(exc.detail, code="invalid") from exc


class ClientFloatField(serializers.FloatField):
    """A finite number as streams.params reads it (no `nan`, `inf` or 1000-digit text)."""

    def to_internal_value(self, data: Any) -> float:
        low = self.min_value if self.min_value is not None else -math.inf
        high = self.max_value if self.max_value is not None else math.inf
        try:
            return parse_number(data, field=self.field_name, minimum=low, maximum=high, text=True)
        except ApiError as exc:
            raise serializers.ValidationError(exc.detail, code="invalid") from exc


class AudioChunkSerializer(serializers.Serializer):
    """POST /audio, field for field as the seed, plus optional room and speaker."""

    stream_id = serializers.CharField(trim_whitespace=False, allow_blank=True)
    seq = ClientIntegerField(
        min_value=0, help_text="at most PARLEY_MAX_CHUNKS_PER_STREAM - 1 (docs/api.md)"
    )
    data = Base64Field(
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        default="",
        help_text="Base64 PCM. Empty only on the final chunk.",
    )
    done = serializers.BooleanField(required=False, default=False)
    speech_text = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=20000
    )
    sample_rate_hz = ClientIntegerField(
        required=False,
        default=24000,
        min_value=SAMPLE_RATE_RANGE[0],
        max_value=SAMPLE_RATE_RANGE[1],
    )
    channels = ClientIntegerField(
        required=False, default=1, min_value=CHANNEL_CHOICES[0], max_value=CHANNEL_CHOICES[-1]
    )
    bytes_per_sample = ClientIntegerField(
        required=False,
        default=2,
        min_value=BYTES_PER_SAMPLE_RANGE[0],
        max_value=BYTES_PER_SAMPLE_RANGE[1],
    )
    playback_speed = ClientFloatField(
        required=False,
        default=1.0,
        min_value=PLAYBACK_SPEED_RANGE[0],
        max_value=PLAYBACK_SPEED_RANGE[1],
    )
    room = serializers.CharField(required=False, default="default")
    speaker = serializers.CharField(required=False, allow_null=True, default=None)


class MissingRangesField(serializers.ListField):
    """Missing seqs as inclusive [first, last] pairs, ascending, at most gaps.MAX_LISTED."""

    def __init__(self, **kwargs: Any) -> None:
        pair = serializers.ListField(
            child=serializers.IntegerField(min_value=0), min_length=2, max_length=2
        )
        kwargs.setdefault(
            "help_text",
            f"the first {MAX_LISTED} runs of missing seqs, as inclusive [first, last] pairs",
        )
        super().__init__(child=pair, max_length=MAX_LISTED, **kwargs)


class AudioAckSerializer(serializers.Serializer):
    stream_id = serializers.CharField()
    seq = serializers.IntegerField()
    duplicate = serializers.BooleanField()
    received_bytes = serializers.IntegerField()
    received_chunks = serializers.IntegerField()
    done = serializers.BooleanField()
    status = serializers.CharField()
    duration_ms = serializers.IntegerField(required=False)
    playback_ends_at = serializers.DateTimeField(required=False, allow_null=True)
    missing_seqs = serializers.ListField(
        child=serializers.IntegerField(),
        required=False,
        max_length=MAX_LISTED,
        help_text=f"awaiting_gaps only: the first {MAX_LISTED} missing seqs",
    )
    missing_ranges = MissingRangesField(required=False)
    missing_count = serializers.IntegerField(
        required=False, help_text="awaiting_gaps only: how many seqs are missing in all"
    )


# A JSON chunk's integer fields: (default, lowest, highest).
INTEGER_FIELDS = {
    "sample_rate_hz": (24000, *SAMPLE_RATE_RANGE),
    "channels": (1, CHANNEL_CHOICES[0], CHANNEL_CHOICES[-1]),
    "bytes_per_sample": (2, *BYTES_PER_SAMPLE_RANGE),
}
MAX_SPEECH_TEXT = 20000


def _invalid(field: str, detail: str) -> ApiError:
    return ApiError(f"invalid_{field}", detail, field=field)


def _text(values: dict, field: str, default: str | None, *, blank: bool) -> str | None:
    """A string field of a JSON body, stripped as DRF's CharField would; strictly a string."""
    if field not in values:
        if default is None:
            raise _invalid(field, f"{field} is required.")
        return default
    value = values[field]
    if type(value) is not str:
        raise _invalid(field, f"{field} must be a string, not {json_type(value)}.")
    if "\x00" in value:
        raise _invalid(field, f"{field} must not contain NUL characters.")
    # Names are taken as sent (" bob" is no name); only the spoken text is trimmed.
    text = value.strip() if field == "speech_text" else value
    if not blank and not text:
        raise _invalid(field, f"{field} may not be blank.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _invalid(field, f"{field} contains a lone surrogate, which is not text.") from exc
    return text


def json_chunk_fields(values: dict) -> dict[str, Any]:
    """A JSON chunk's fields, typed strictly: JSON has numbers, booleans and strings, so
    `"seq": "1"` or `"done": "yes"` is a client bug to report, not to guess at.

    Plain Python rather than AudioChunkSerializer (which still describes the body in the
    OpenAPI schema and validates the raw-body form's query strings): DRF's field machinery
    cost more per chunk than the database did (docs/benchmarks.md).
    """
    if "seq" not in values:
        raise _invalid("seq", "seq is required.")
    seq = validate_seq(values["seq"])
    done = values.get("done", False)
    if type(done) is not bool:
        raise _invalid("done", f"done must be true or false, not {json_type(done)}.")
    data = values.get("data", "")
    if type(data) is not str:
        raise ApiError(
            "bad_base64", f"data must be a base64 string, not {json_type(data)}.", field="data"
        )
    speech_text = _text(values, "speech_text", "", blank=True)
    if len(speech_text) > MAX_SPEECH_TEXT:
        raise _invalid("speech_text", f"speech_text may have at most {MAX_SPEECH_TEXT} characters.")
    speaker = values.get("speaker")
    fields: dict[str, Any] = {
        "stream_id": _text(values, "stream_id", None, blank=True),
        "seq": seq,
        "data": data,
        "done": done,
        "speech_text": speech_text,
        "room": _text(values, "room", "default", blank=False),
        "speaker": None if speaker is None else _text(values, "speaker", None, blank=False),
    }
    for field, (default, low, high) in INTEGER_FIELDS.items():
        value = values.get(field, default)
        fields[field] = parse_int(value, field=field, minimum=low, maximum=high)
    low_speed, high_speed = PLAYBACK_SPEED_RANGE
    fields["playback_speed"] = parse_number(
        values.get("playback_speed", 1.0),
        field="playback_speed",
        minimum=low_speed,
        maximum=high_speed,
    )
    return fields


def json_type(value: Any) -> str:
    names = {
        bool: "a boolean",
        str: "a string",
        float: "a decimal number",
        list: "a list",
        dict: "an object",
    }
    if value is None:
        return "null"
    if isinstance(value, HugeInt):
        return repr(value)
    return names.get(type(value), type(value).__name__)


def check_chunk_data(data: bytes, fmt: PcmFormat, *, done: bool) -> None:
    """A chunk's audio bytes against the stream's format and the server's limit.

    Raises ApiError `chunk_too_large` (413, over PARLEY_MAX_CHUNK_BYTES), `partial_frame`
    (not a whole number of frames) or `empty_chunk` (no data, and not the final chunk).
    """
    limit = settings.PARLEY_MAX_CHUNK_BYTES
    if len(data) > limit:
        raise ApiError(
            "chunk_too_large",
            f"A chunk may carry at most {limit} bytes of audio; this one has {len(data)}.",
            field="data",
            status_code=413,
        )
    if len(data) % fmt.frame_bytes:
        raise ApiError(
            "partial_frame",
            f"data is {len(data)} bytes, not a whole number of {fmt.frame_bytes}-byte frames "
            f"({fmt.channels} channel(s) x {fmt.bytes_per_sample} bytes).",
            field="data",
        )
    if not data and not done:
        raise ApiError(
            "empty_chunk", "data is empty; only the final chunk (done=true) may be.", field="data"
        )


def chunk_from_request(values: dict, *, raw_data: bytes | None, speaker: str) -> ChunkIn:
    """Validate one chunk (JSON or raw body) into a ChunkIn, or raise ApiError with the field."""
    if raw_data is None:
        fields = json_chunk_fields(values)
    else:  # the raw-body form: every field is a query string, which DRF parses
        serializer = AudioChunkSerializer(data=values)
        serializer.is_valid(raise_exception=True)
        fields = serializer.validated_data
        validate_seq(fields["seq"])
    stream_id = validate_stream_id(fields["stream_id"])
    room = validate_room_name(fields["room"])
    validate_speaker(speaker)
    try:
        fmt = PcmFormat(
            sample_rate_hz=fields["sample_rate_hz"],
            channels=fields["channels"],
            bytes_per_sample=fields["bytes_per_sample"],
            playback_speed=fields["playback_speed"],
        ).validate()
    except FormatError as exc:
        raise ApiError(f"invalid_{exc.field}", exc.detail, field=exc.field) from exc
    if raw_data is None:
        try:
            data = base64.b64decode(fields["data"], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError("bad_base64", "data is not valid base64.", field="data") from exc
    else:
        data = raw_data
    check_chunk_data(data, fmt, done=fields["done"])
    return ChunkIn(
        room_name=room,
        speaker=speaker,
        stream_id=stream_id,
        seq=fields["seq"],
        data=data,
        done=fields["done"],
        speech_text=fields["speech_text"],
        fmt=fmt,
    )


class StrictCharField(serializers.CharField):
    """A JSON string, not a number DRF would turn into one."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field({"type": "string", "pattern": SPEAKER_RE.pattern, "nullable": True})
class SpeakerField(StrictCharField):
    """A speaker name as the services accept it (the schema says so, the fuzz suite checks)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(trim_whitespace=False, **kwargs)

    def get_value(self, dictionary: Any) -> Any:
        # DRF reads an empty form field as null when the field allows null; a multipart
        # `speaker=` names an empty speaker, which is refused like the JSON `""`.
        if html.is_html_input(dictionary) and self.field_name in dictionary:
            return dictionary.get(self.field_name)
        return super().get_value(dictionary)

    def to_internal_value(self, data: Any) -> str:
        value = super().to_internal_value(data)
        validate_speaker(value)
        return value


class FloorClaimSerializer(serializers.Serializer):
    speaker = SpeakerField(required=False, allow_null=True, default=None)


class TurnSerializer(serializers.Serializer):
    turn_id = serializers.CharField()
    speaker = serializers.CharField()
    status = serializers.CharField()
    reason = serializers.CharField()
    claimed_at = serializers.DateTimeField()
    lease_expires_at = serializers.DateTimeField(allow_null=True)
    expected_release_at = serializers.DateTimeField(allow_null=True)


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField()
    detail = serializers.CharField()
    field = serializers.CharField(allow_null=True, required=False)


class FloorHeldSerializer(ErrorSerializer):
    """409 `floor_held`: who holds the floor and when it is expected back."""

    holder = serializers.CharField()
    turn_id = serializers.CharField()
    expected_release_at = serializers.DateTimeField(allow_null=True)


class StreamFieldsSerializer(serializers.Serializer):
    """What a stream and the `state` event's stream share."""

    stream_id = serializers.CharField()
    speaker = serializers.CharField()
    status = serializers.CharField()
    sample_rate_hz = serializers.IntegerField()
    channels = serializers.IntegerField()
    bytes_per_sample = serializers.IntegerField()
    playback_speed = serializers.FloatField()
    bytes = serializers.IntegerField()
    chunks = serializers.IntegerField()
    duration_ms = serializers.IntegerField()
    playback_ends_at = serializers.DateTimeField(allow_null=True)


class StateStreamSerializer(StreamFieldsSerializer):
    playhead_ms = serializers.IntegerField()


class StateSerializer(serializers.Serializer):
    """GET /api/rooms/{room}, the same shape as the `state` event."""

    type = serializers.CharField()
    id = serializers.IntegerField()
    room = serializers.CharField()
    ts = serializers.DateTimeField()
    speaker = serializers.CharField(allow_null=True)
    turn = TurnSerializer(allow_null=True)
    stream = StateStreamSerializer(allow_null=True)
    spectators = serializers.IntegerField()
    last_event_id = serializers.IntegerField()


class StreamSerializer(StreamFieldsSerializer):
    kind = serializers.CharField()
    room = serializers.CharField()
    turn_id = serializers.CharField(allow_null=True)
    missing_seqs = serializers.ListField(
        child=serializers.IntegerField(),
        max_length=MAX_LISTED,
        help_text=f"the first {MAX_LISTED} missing seqs (see missing_ranges, missing_count)",
    )
    missing_ranges = MissingRangesField()
    missing_count = serializers.IntegerField(help_text="how many seqs are missing in all")
    heard_ms = serializers.IntegerField(allow_null=True)
    speech_text = serializers.CharField(
        allow_null=True,
        help_text="what was said: null until playback ended or was cut; of a cut stream, "
        "only the words that had started playing",
    )
    script = serializers.CharField(
        allow_null=True,
        help_text="the whole text as the speaker sent it (null until playback ended or was "
        "cut); longer than speech_text when the stream was cut off",
    )
    created_at = serializers.DateTimeField()
    finalized_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)


class RoomStreamSerializer(serializers.Serializer):
    """The live stream a room list item names."""

    stream_id = serializers.CharField()
    kind = serializers.CharField()
    speaker = serializers.CharField()
    status = serializers.CharField()


class RoomSummarySerializer(serializers.Serializer):
    """One item of GET /api/rooms."""

    room = serializers.CharField()
    active = serializers.BooleanField(help_text="the floor is held or a stream is live")
    speaker = serializers.CharField(allow_null=True, help_text="who holds the floor")
    turn = TurnSerializer(allow_null=True, help_text="the active turn (claimed_at: since when)")
    stream = RoomStreamSerializer(allow_null=True, help_text="the stream arriving or playing")
    spectators = serializers.IntegerField(help_text="open spectator sockets")
    last_event_id = serializers.IntegerField()
    last_activity_at = serializers.DateTimeField(
        help_text="when the room's last event happened (its creation before any)"
    )
    created_at = serializers.DateTimeField()
