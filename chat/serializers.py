"""Request bodies of POST /chat, POST /audio/stream and POST /api/rooms/{room}/say."""

from __future__ import annotations

from rest_framework import serializers

from chat.encoding import FORMATS, QUALITIES

MAX_TEXT = 4096


class StrictCharField(serializers.CharField):
    """A CharField that takes only JSON strings: DRF's would turn 5 into "5" and True into
    "True". Lone surrogates ("\\ud800") are refused too: they cannot be stored or encoded."""

    default_error_messages = {
        "invalid": "Not a valid string.",
        "surrogate": "Not valid Unicode text (it contains a lone surrogate).",
    }

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        try:
            data.encode("utf-8")
        except UnicodeEncodeError:
            # code "invalid": the error is invalid_<field>, like every other bad value.
            message = self.error_messages["surrogate"]
            raise serializers.ValidationError(message, code="invalid") from None
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A BooleanField that takes only JSON true/false: DRF's would take 0, 1.0, "yes" and
    "off" too, which the schema (and the seed) do not offer."""

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not know, so a typo is an error instead of a silent default."""

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(self.fields))
            if unknown:
                known = ", ".join(self.fields)
                raise serializers.ValidationError(
                    {unknown[0]: [f"Unknown field; the fields are {known}."]}
                )
        return super().to_internal_value(data)


def _choice(choices, default: str) -> serializers.ChoiceField:
    names = ", ".join(choices)
    return serializers.ChoiceField(
        choices=list(choices),
        default=default,
        error_messages={"invalid_choice": f'"{{input}}" is not one of {names}.'},
    )


def _voice() -> serializers.CharField:
    return StrictCharField(
        required=False, allow_null=True, max_length=128, help_text="an engine or stored voice"
    )


def _speed() -> serializers.FloatField:
    return serializers.FloatField(default=1.0, min_value=0.25, max_value=4.0)


class ChatRequestSerializer(StrictSerializer):
    text = StrictCharField(max_length=MAX_TEXT)
    use_tts = StrictBooleanField(default=False)
    stream_audio = StrictBooleanField(default=False)
    user = StrictCharField(required=False, allow_null=True, max_length=128)


class ChatResponseSerializer(serializers.Serializer):
    response = serializers.CharField()
    provider_used = serializers.CharField()
    processing_time = serializers.FloatField()
    audio_url = serializers.CharField(allow_null=True)
    stream_url = serializers.CharField(allow_null=True)
    request_id = serializers.CharField()
    current_user = serializers.CharField()


class AudioStreamRequestSerializer(StrictSerializer):
    text = StrictCharField(max_length=MAX_TEXT)
    chunk_size = serializers.IntegerField(default=4096, min_value=256, max_value=1024 * 1024)
    format = _choice(FORMATS, "wav")
    quality = _choice(QUALITIES, "medium")
    voice = _voice()
    speed = _speed()


class SayRequestSerializer(StrictSerializer):
    speaker = StrictCharField(required=False, allow_null=True, max_length=128)
    text = StrictCharField(max_length=MAX_TEXT)
    voice = _voice()
    speed = _speed()
    stream_id = StrictCharField(required=False, allow_null=True, max_length=128)
    chunk_ms = serializers.IntegerField(default=200, min_value=20, max_value=2000)
