"""A recording session: a Stream of kind "recording" plus what the socket contract needs."""

from __future__ import annotations

from django.db import models

from streams.models import Stream


class RecordingStatus(models.TextChoices):
    RECORDING = "recording"
    # Stopped; the file is being built. A crash here leaves it for force_stop to redo.
    PROCESSING = "processing"
    COMPLETE = "complete"
    # The file could not be built (e.g. undecodable audio); the chunks are kept to retry.
    FAILED = "failed"
    # Ended without a single chunk: there is nothing to build.
    EMPTY = "empty"


class Transport(models.TextChoices):
    SOCKETIO = "socketio"
    WEBSOCKET = "websocket"


class Container(models.TextChoices):
    PCM = "pcm"
    WEBM = "webm"
    OGG = "ogg"
    MP3 = "mp3"
    WAV = "wav"


class Recording(models.Model):
    # stream.stream_id is the session's sid: the seed's `streaming_id` and the file's name.
    # Its chunks are the durable audio; the WAV file is rebuilt from them when missing.
    stream = models.OneToOneField(Stream, on_delete=models.CASCADE, related_name="recording")
    # sha256 of the streaming key: whoever holds the key may force-stop the session.
    key_hash = models.CharField(max_length=64, unique=True)
    transport = models.CharField(max_length=16, choices=Transport.choices)
    # Plain WebSocket sessions: the consumer's channel, so any worker can tell it of a stop.
    channel_name = models.CharField(max_length=200, blank=True)
    container = models.CharField(max_length=8, choices=Container.choices, default="pcm")
    decode_rate_hz = models.PositiveIntegerField(null=True, blank=True)
    decode_channels = models.PositiveSmallIntegerField(null=True, blank=True)
    # True when a room was named at connect: chunks are broadcast there as audio_chunk events.
    broadcast = models.BooleanField(default=False)
    # A container recording with a room: the decoded PCM the room hears, as its own stream
    # (`<sid>:live`). The recording's own stream keeps the container bytes the file is built from.
    live_stream = models.OneToOneField(
        Stream,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="live_of_recording",
    )
    # "http://host[:port]" as the client reached us, for the seed's file_url.
    base_url = models.CharField(max_length=255)
    status = models.CharField(
        max_length=16, choices=RecordingStatus.choices, default=RecordingStatus.RECORDING
    )
    error = models.TextField(blank=True)

    # The saved WAV, once built.
    wav_sample_rate_hz = models.PositiveIntegerField(null=True, blank=True)
    wav_channels = models.PositiveSmallIntegerField(null=True, blank=True)
    wav_bytes_per_sample = models.PositiveSmallIntegerField(null=True, blank=True)
    file_bytes = models.BigIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    stopped_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "created_at"], name="recording_status")]

    def __str__(self) -> str:
        return f"{self.stream.stream_id} ({self.status})"

    @property
    def sid(self) -> str:
        return self.stream.stream_id
