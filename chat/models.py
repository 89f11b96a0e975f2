"""Chat exchanges (seed 004): what was asked, what was answered, and its audio.

A row is also the pending stream of `GET /audio/stream/{request_id}`: it lives in the database,
not in a process, so any worker can serve the stream URL another worker handed out.
"""

from __future__ import annotations

from django.db import models


class AudioStatus(models.TextChoices):
    NONE = "none"  # use_tts was false
    PENDING = "pending"  # stream_url handed out, not fetched yet
    STREAMING = "streaming"  # a GET is streaming it now
    STREAMED = "streamed"  # streamed to the end: cleaned up, the URL answers 404
    READY = "ready"  # stream_audio false: the saved WAV is in `audio_wav`
    FAILED = "failed"


class ChatExchange(models.Model):
    request_id = models.CharField(max_length=32, unique=True)
    user = models.CharField(max_length=128)
    text = models.TextField()
    response = models.TextField()
    provider_used = models.CharField(max_length=128)
    processing_time = models.FloatField(help_text="seconds the POST /chat took")
    use_tts = models.BooleanField(default=False)
    stream_audio = models.BooleanField(default=False)
    audio_status = models.CharField(
        max_length=16, choices=AudioStatus.choices, default=AudioStatus.NONE
    )
    # The stream URL answers 404 after this moment (PARLEY_STREAM_TTL_S after the POST).
    stream_expires_at = models.DateTimeField(null=True, blank=True)
    streamed_at = models.DateTimeField(null=True, blank=True)
    # stream_audio false: the whole WAV (real sizes), served by audio_url from any worker.
    audio_wav = models.BinaryField(null=True, blank=True, editable=False)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["user", "-created_at"], name="chat_user_recent")]

    def __str__(self) -> str:
        return f"{self.user}: {self.text[:40]}"
