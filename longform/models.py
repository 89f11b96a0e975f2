"""Long text jobs: a text synthesized piece by piece in the background, each finished piece
stored (a file under MEDIA_ROOT and a LongPiece row) so the job survives a restart."""

from __future__ import annotations

import uuid

from django.db import models


class LongStatus(models.TextChoices):
    # Chatterbox's names, so its clients read them unchanged.
    PENDING = "pending"  # waiting for a worker (new, resumed, retried, or its worker died)
    PROCESSING = "processing"  # claimed by `worker` until `lease_until`
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE = (LongStatus.PENDING, LongStatus.PROCESSING)
FINISHED = (LongStatus.COMPLETED, LongStatus.FAILED, LongStatus.CANCELLED)


class LongJob(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    status = models.CharField(max_length=16, choices=LongStatus.choices, default="pending")
    text = models.TextField()
    text_chars = models.PositiveIntegerField(default=0)
    model = models.CharField(max_length=64, blank=True)
    voice = models.CharField(max_length=128, blank=True)
    response_format = models.CharField(max_length=8, default="mp3")
    speed = models.FloatField(default=1.0)
    # Requested rate (null: the format's default); once the first piece is out, the PCM rate
    # of every piece, so a resumed job's pieces all match.
    sample_rate = models.PositiveIntegerField(null=True, blank=True)
    pcm_rate = models.PositiveIntegerField(null=True, blank=True)
    params = models.JSONField(default=dict, blank=True)  # the seed's knobs the client sent
    piece_chars = models.PositiveIntegerField(default=500)
    total_pieces = models.PositiveIntegerField(default=0)
    done_pieces = models.PositiveIntegerField(default=0)
    done_chars = models.PositiveIntegerField(default=0)
    audio_bytes = models.BigIntegerField(default=0, help_text="PCM bytes of finished pieces")
    # Who runs it: a process id string, and until when (renewed while it runs).
    worker = models.CharField(max_length=128, blank=True)
    lease_until = models.DateTimeField(null=True, blank=True)
    output_name = models.CharField(max_length=255, blank=True, help_text="under MEDIA_ROOT")
    output_bytes = models.BigIntegerField(null=True, blank=True)
    first_piece_s = models.FloatField(null=True, blank=True, help_text="creation to 1st piece")
    processing_s = models.FloatField(default=0.0, help_text="synthesis time, all runs")
    retry_count = models.PositiveIntegerField(default=0)
    display_name = models.CharField(max_length=200, blank=True)
    tags = models.JSONField(default=list, blank=True)
    is_archived = models.BooleanField(default=False)
    error = models.CharField(max_length=64, blank=True)
    error_detail = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    paused_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "created_at"], name="longjob_status_created")]

    def __str__(self) -> str:
        return f"long {self.id} ({self.status})"


class LongPiece(models.Model):
    """One finished piece: its text span and its PCM file (pcm_rate Hz, 16-bit mono)."""

    job = models.ForeignKey(LongJob, on_delete=models.CASCADE, related_name="pieces")
    index = models.PositiveIntegerField()
    start = models.PositiveIntegerField()
    end = models.PositiveIntegerField()
    file_name = models.CharField(max_length=255, help_text="under MEDIA_ROOT")
    audio_bytes = models.BigIntegerField()
    synth_s = models.FloatField(default=0.0)
    worker = models.CharField(max_length=128, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "index"]
        constraints = [models.UniqueConstraint(fields=["job", "index"], name="longpiece_job_index")]

    def __str__(self) -> str:
        return f"piece {self.index} of {self.job_id}"
