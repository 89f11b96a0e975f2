"""Speech synthesis records: every synthesis is a SpeechJob; stored voices are Voice rows."""

from __future__ import annotations

import uuid

from django.db import models


class JobStatus(models.TextChoices):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class CacheOutcome(models.TextChoices):
    NONE = "", "not cached"
    HIT = "hit"
    MISS = "miss"


class SpeechJob(models.Model):
    """One synthesis: what was asked, what the engine did, and how it went."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    # Which surface asked: "speech" (/v1/audio/speech), "stream", "chat", "say", ...
    kind = models.CharField(max_length=32, default="speech")
    # The URL path that asked: /api/rooms/{64-char room}/say alone is 79 characters.
    endpoint = models.CharField(max_length=255, blank=True)
    status = models.CharField(max_length=16, choices=JobStatus.choices, default="queued")

    text = models.TextField()
    text_chars = models.PositiveIntegerField(default=0)
    model = models.CharField(max_length=64, blank=True, help_text="as requested")
    engine = models.CharField(max_length=64)
    voice = models.CharField(max_length=128, blank=True, help_text="as requested")
    engine_voice = models.CharField(max_length=128, blank=True)
    response_format = models.CharField(max_length=8, blank=True)
    stream_format = models.CharField(max_length=8, blank=True)
    sample_rate = models.PositiveIntegerField(help_text="Hz of the audio sent")
    engine_sample_rate = models.PositiveIntegerField(default=0)
    speed = models.FloatField(default=1.0, help_text="as requested")
    speed_applied = models.FloatField(default=1.0)
    params = models.JSONField(default=dict, blank=True)
    voice_sample_name = models.CharField(max_length=255, blank=True)
    # The synthesis cache (speech.cache): "hit" served from it without synthesis, "miss"
    # looked up and synthesized, "" not cacheable (engine, voice sample) or the cache is off.
    cache = models.CharField(max_length=8, choices=CacheOutcome.choices, blank=True, default="")

    current_chunk = models.PositiveIntegerField(default=0)
    total_chunks = models.PositiveIntegerField(default=0)
    audio_bytes = models.BigIntegerField(default=0, help_text="PCM bytes synthesized")
    bytes_sent = models.BigIntegerField(default=0, help_text="response bytes sent")
    audio_seconds = models.FloatField(default=0.0)
    first_audio_ms = models.FloatField(null=True, blank=True, help_text="engine's first chunk")
    ttfb_ms = models.FloatField(null=True, blank=True, help_text="first byte to the client")
    elapsed_seconds = models.FloatField(null=True, blank=True)
    real_time_factor = models.FloatField(null=True, blank=True)
    usage = models.JSONField(default=dict, blank=True)
    error = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)

    created_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "-created_at"], name="speechjob_status_recent"),
            models.Index(fields=["-created_at"], name="speechjob_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_JOB_STATUSES


def voice_upload_to(instance: Voice, filename: str) -> str:
    suffix = filename.rsplit(".", 1)[-1].lower() if "." in filename else "bin"
    return f"voices/{instance.name}-{uuid.uuid4().hex[:8]}.{suffix[:8]}"


class Voice(models.Model):
    """A named voice: an engine preset (engine + engine voice) or an uploaded sample."""

    name = models.CharField(max_length=64, unique=True)
    engine = models.CharField(max_length=64, blank=True, help_text="blank: the default engine")
    preset = models.CharField(max_length=128, blank=True, help_text="the engine's voice id")
    sample = models.FileField(upload_to=voice_upload_to, blank=True)
    sample_filename = models.CharField(max_length=255, blank=True)
    sample_content_type = models.CharField(max_length=100, blank=True)
    sample_bytes = models.PositiveIntegerField(default=0)
    sample_seconds = models.FloatField(null=True, blank=True)
    language = models.CharField(max_length=32, blank=True)
    description = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def kind(self) -> str:
        return "sample" if self.sample else "preset"


class VoiceAlias(models.Model):
    """Another name of a stored voice: it resolves in synthesis like the voice's own name
    (the seed's voice library aliases). Deleted with its voice; follows it when renamed."""

    alias = models.CharField(max_length=64, unique=True)
    voice = models.ForeignKey(Voice, on_delete=models.CASCADE, related_name="aliases")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["alias"]

    def __str__(self) -> str:
        return f"{self.alias} -> {self.voice_id}"


class SpeechSettings(models.Model):
    """The one row of operator settings every worker shares (pk=1).

    The default voice is a stored voice (``default_voice``, so a rename follows it and a
    delete clears it) or a built-in name (``default_builtin``: an OpenAI or engine voice).
    ``history_cleared_at`` / ``memory_reset_at``: /status/history and /memory's
    request_counter count only SpeechJob records created after them.
    """

    default_voice = models.ForeignKey(
        Voice, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    default_builtin = models.CharField(max_length=128, blank=True)
    history_cleared_at = models.DateTimeField(null=True, blank=True)
    memory_reset_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "speech settings"

    def __str__(self) -> str:
        return "speech settings"
