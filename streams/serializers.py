"""Request and response shapes of the core API (validation and the OpenAPI schema)."""

from __future__ import annotations

import base64
import binascii
import math
from typing import Any

from django.conf import settings
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from streams.audio import FormatError, PcmFormat
from streams.errors import ApiError
from streams.services import ChunkIn, validate_room_name, validate_speaker, validate_stream_id


class Base64Field(serializers.CharField):
    """Base64 text. Without DRF's surrogate check, a Python loop over every character that
    cost 2.5 % of ingest CPU: base64 decoding rejects anything outside ASCII anyway."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.validators = [
            v for v in self.validators if not isinstance(v, ProhibitSurrogateCharactersValidator)
        ]


class AudioChunkSerializer(serializers.Serializer):
    """POST /audio, field for field as the seed, plus optional room and speaker."""

    stream_id = serializers.CharField(trim_whitespace=False, allow_blank=True)
    seq = serializers.IntegerField(min_value=0, max_value=2**31 - 1)
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
    sample_rate_hz = serializers.IntegerField(required=False, default=24000)
    channels = serializers.IntegerField(required=False, default=1)
    bytes_per_sample = serializers.IntegerField(required=False, default=2)
    playback_speed = serializers.FloatField(required=False, default=1.0)
    room = serializers.CharField(required=False, default="default")
    speaker = serializers.CharField(required=False, allow_null=True, default=None)


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
    missing_seqs = serializers.ListField(child=serializers.IntegerField(), required=False)


def _is_int(value: Any) -> bool:
    return type(value) is int  # not bool, not "5", not 5.0: DRF decides those


def _clean_text(value: Any, *, blank: bool, ascii_only: bool = True) -> str | None:
    """A CharField's value as DRF would clean it, or None when DRF must decide."""
    if type(value) is not str or "\x00" in value:
        return None
    if ascii_only and not value.isascii():
        return None
    text = value.strip()
    if not blank and not text:
        return None
    return text


def _plain_chunk_fields(values: dict) -> dict[str, Any] | None:
    """AudioChunkSerializer's validated_data for well-typed JSON, without DRF.

    DRF's field machinery cost more per chunk than the database did (docs/benchmarks.md).
    This only accepts what the serializer would accept unchanged; anything else (a missing
    field, a string where a number goes, a lone surrogate, ...) returns None and goes through
    the serializer, which then writes the error, so errors are exactly DRF's.
    """
    stream_id, seq = values.get("stream_id"), values.get("seq")
    data = values.get("data", "")
    if type(stream_id) is not str or "\x00" in stream_id or not stream_id.isascii():
        return None
    if not _is_int(seq) or not 0 <= seq <= 2**31 - 1:
        return None
    if type(data) is not str or not data.isascii() or "\x00" in data:
        return None
    done = values.get("done", False)
    if type(done) is not bool:
        return None
    speech_text = values.get("speech_text", "")
    if speech_text != "":
        speech_text = _clean_text(speech_text, blank=True, ascii_only=False)
        if speech_text is None or len(speech_text) > 20000:
            return None
        try:
            speech_text.encode("utf-8")  # a lone surrogate: DRF's error
        except UnicodeEncodeError:
            return None
    room = _clean_text(values.get("room", "default"), blank=False)
    speaker = values.get("speaker")
    if speaker is not None:
        speaker = _clean_text(speaker, blank=False)
    if room is None or (speaker is None and values.get("speaker") is not None):
        return None
    fields = {
        "stream_id": stream_id,
        "seq": seq,
        "data": data,
        "done": done,
        "speech_text": speech_text,
        "room": room,
        "speaker": speaker,
    }
    for name, default in (("sample_rate_hz", 24000), ("channels", 1), ("bytes_per_sample", 2)):
        value = values.get(name, default)
        if not _is_int(value):
            return None
        fields[name] = value
    speed = values.get("playback_speed", 1.0)
    if type(speed) not in (int, float) or not math.isfinite(speed):
        return None
    fields["playback_speed"] = float(speed)
    return fields


def chunk_from_request(values: dict, *, raw_data: bytes | None, speaker: str) -> ChunkIn:
    """Validate one chunk (JSON or raw body) into a ChunkIn, or raise ApiError with the field."""
    fields = _plain_chunk_fields(values) if raw_data is None else None
    if fields is None:
        serializer = AudioChunkSerializer(data=values)
        serializer.is_valid(raise_exception=True)
        fields = serializer.validated_data
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
    if not data and not fields["done"]:
        raise ApiError(
            "empty_chunk", "data is empty; only the final chunk (done=true) may be.", field="data"
        )
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


class FloorClaimSerializer(serializers.Serializer):
    speaker = serializers.CharField(required=False, allow_null=True, default=None)


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


class StreamSerializer(serializers.Serializer):
    stream_id = serializers.CharField()
    kind = serializers.CharField()
    room = serializers.CharField()
    speaker = serializers.CharField()
    turn_id = serializers.CharField(allow_null=True)
    status = serializers.CharField()
    sample_rate_hz = serializers.IntegerField()
    channels = serializers.IntegerField()
    bytes_per_sample = serializers.IntegerField()
    playback_speed = serializers.FloatField()
    bytes = serializers.IntegerField()
    chunks = serializers.IntegerField()
    duration_ms = serializers.IntegerField()
    missing_seqs = serializers.ListField(child=serializers.IntegerField())
    playback_ends_at = serializers.DateTimeField(allow_null=True)
    heard_ms = serializers.IntegerField(allow_null=True)
    speech_text = serializers.CharField()
