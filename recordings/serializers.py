"""Response shapes of the recordings API (for the OpenAPI schema; views build plain dicts)."""

from __future__ import annotations

from rest_framework import serializers


class RecordingFormatSerializer(serializers.Serializer):
    container = serializers.ChoiceField(choices=["pcm", "webm", "ogg", "mp3", "wav"])
    sample_rate_hz = serializers.IntegerField(allow_null=True)
    channels = serializers.IntegerField(allow_null=True)
    bytes_per_sample = serializers.IntegerField(allow_null=True)


class RecordingSerializer(serializers.Serializer):
    streaming_id = serializers.CharField()
    status = serializers.ChoiceField(
        choices=["recording", "processing", "complete", "failed", "empty"]
    )
    transport = serializers.ChoiceField(choices=["socketio", "websocket"])
    speaker = serializers.CharField()
    room = serializers.CharField(allow_null=True, help_text="where it is broadcast live")
    format = RecordingFormatSerializer()
    chunks = serializers.IntegerField()
    bytes = serializers.IntegerField(help_text="bytes received (encoded, for containers)")
    duration_ms = serializers.IntegerField(
        allow_null=True, help_text="of the saved file; of the PCM received while recording"
    )
    file_bytes = serializers.IntegerField(allow_null=True)
    file_url = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    created_at = serializers.DateTimeField()
    stopped_at = serializers.DateTimeField(allow_null=True)
    completed_at = serializers.DateTimeField(allow_null=True)
