"""Rooms, turns, streams, chunks, utterances and the room event log (DESIGN.md "Domain")."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import models
from django.db.models import Q

from streams.audio import PcmFormat


class Room(models.Model):
    name = models.CharField(max_length=128, unique=True)
    # Last allocated RoomEvent.seq. Bumping it row-locks the room, so a room's events are
    # numbered and committed in one order across every worker.
    last_event_id = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class TurnStatus(models.TextChoices):
    CLAIMED = "claimed"
    FINALIZED = "finalized"
    RELEASED = "released"
    INTERRUPTED = "interrupted"
    EXPIRED = "expired"


ACTIVE_TURN_STATUSES = (TurnStatus.CLAIMED, TurnStatus.FINALIZED)


class Turn(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="turns")
    speaker = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=TurnStatus.choices, default="claimed")
    reason = models.CharField(max_length=64, blank=True)
    claimed_at = models.DateTimeField()
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    # Predicted end of playback: the moment the server releases the floor.
    release_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-claimed_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["room"],
                condition=Q(status__in=["claimed", "finalized"]),
                name="one_active_turn_per_room",
            )
        ]
        indexes = [
            models.Index(fields=["status", "release_at"], name="turn_due_release"),
            models.Index(fields=["status", "lease_expires_at"], name="turn_due_expiry"),
            models.Index(fields=["room", "status"], name="turn_room_status"),
        ]

    def __str__(self) -> str:
        return f"{self.speaker} in {self.room_id} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_TURN_STATUSES


class StreamStatus(models.TextChoices):
    STREAMING = "streaming"
    # The final chunk came but lower seqs are missing: waiting up to PARLEY_GAP_TIMEOUT_S.
    AWAITING_GAPS = "awaiting_gaps"
    PLAYING = "playing"
    PLAYED = "played"
    INTERRUPTED = "interrupted"


OPEN_STREAM_STATUSES = (StreamStatus.STREAMING, StreamStatus.AWAITING_GAPS)


class StreamKind(models.TextChoices):
    SPEECH = "speech"
    SYNTHESIS = "synthesis"
    RECORDING = "recording"


class Stream(models.Model):
    stream_id = models.CharField(max_length=128, unique=True)
    kind = models.CharField(max_length=16, choices=StreamKind.choices, default="speech")
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="streams")
    turn = models.ForeignKey(
        Turn, on_delete=models.SET_NULL, null=True, blank=True, related_name="streams"
    )
    speaker = models.CharField(max_length=128)
    status = models.CharField(max_length=16, choices=StreamStatus.choices, default="streaming")

    sample_rate_hz = models.PositiveIntegerField(default=24000)
    channels = models.PositiveSmallIntegerField(default=1)
    bytes_per_sample = models.PositiveSmallIntegerField(default=2)
    playback_speed = models.FloatField(default=1.0)

    total_bytes = models.BigIntegerField(default=0)
    chunk_count = models.PositiveIntegerField(default=0)
    # Chunks below this seq have been published to spectators, in order.
    next_emit_seq = models.PositiveIntegerField(default=0)
    emitted_bytes = models.BigIntegerField(default=0)
    final_seq = models.IntegerField(null=True, blank=True)
    # Seqs the gap timeout gave up on: the first streams.gaps.MAX_LISTED inclusive
    # [first, last] ranges, and how many seqs they are in all (a count, never a list).
    missing_ranges = models.JSONField(default=list, blank=True)
    missing_count = models.PositiveIntegerField(default=0)
    # What was said: the whole text, or only its heard part once the stream was cut off.
    speech_text = models.TextField(blank=True)
    # The text as the speaker sent it (the script), kept whole when a cut shortens speech_text.
    script = models.TextField(blank=True)
    # [text offset, audio byte offset] of each word, when the producer knew them (Parley's
    # own TTS, chat.say): a cut then publishes exactly the words that had started playing.
    word_marks = models.JSONField(default=list, blank=True)

    first_arrival_at = models.DateTimeField(null=True, blank=True)
    # Where the listener's playhead will be after the last published chunk.
    playhead_at = models.DateTimeField(null=True, blank=True)
    gap_deadline = models.DateTimeField(null=True, blank=True)
    playback_ends_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    heard_ms = models.PositiveIntegerField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    finalized_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "gap_deadline"], name="stream_due_gap"),
            models.Index(fields=["room", "status"], name="stream_room_status"),
            models.Index(fields=["speaker", "created_at"], name="stream_speaker"),
        ]

    def __str__(self) -> str:
        return self.stream_id

    @property
    def pcm_format(self) -> PcmFormat:
        return PcmFormat(
            sample_rate_hz=self.sample_rate_hz,
            channels=self.channels,
            bytes_per_sample=self.bytes_per_sample,
            playback_speed=self.playback_speed,
        )

    @property
    def is_open(self) -> bool:
        return self.status in OPEN_STREAM_STATUSES


class Chunk(models.Model):
    stream = models.ForeignKey(Stream, on_delete=models.CASCADE, related_name="chunks")
    # The stream's room, repeated: every room-scoped table carries the room, so the largest
    # one can be partitioned or distributed by room with the rest (docs/scaling.md).
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="+")
    seq = models.PositiveIntegerField()
    data = models.BinaryField()
    size = models.PositiveIntegerField()
    received_at = models.DateTimeField()
    # Set when the chunk is published in order: its place in the stream and on the playhead.
    offset_bytes = models.BigIntegerField(null=True, blank=True)
    play_start_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["stream", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["stream", "seq"], name="chunk_unique_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.stream_id}#{self.seq}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.room_id is None and self.stream_id is not None:
            self.room_id = self.stream.room_id
        super().save(*args, **kwargs)


class Utterance(models.Model):
    """The text side of a stream: the room's transcript is its utterances."""

    stream = models.OneToOneField(Stream, on_delete=models.CASCADE, related_name="utterance")
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="utterances")
    speaker = models.CharField(max_length=128)
    text = models.TextField(blank=True)  # what was said (the heard part of a cut utterance)
    script = models.TextField(blank=True)  # the whole text as sent
    duration_ms = models.PositiveIntegerField(default=0)
    heard_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    # Text is published when its audio has finished playing, not when it arrives.
    published_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [models.Index(fields=["room", "created_at"], name="utterance_room")]

    def __str__(self) -> str:
        return f"{self.speaker}: {self.text[:40]}"


class RoomEvent(models.Model):
    """Append-only outbox: every broadcast is written here first, in the same transaction."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="events")
    seq = models.BigIntegerField()
    type = models.CharField(max_length=32)
    payload = models.JSONField(default=dict)
    # audio_chunk events keep their bytes in the chunk, not twice.
    chunk = models.ForeignKey(Chunk, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["room", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["room", "seq"], name="room_event_unique_seq"),
        ]
        indexes = [models.Index(fields=["room", "type", "seq"], name="room_event_type")]

    def __str__(self) -> str:
        return f"{self.room_id}#{self.seq} {self.type}"


class ApiKey(models.Model):
    speaker = models.CharField(max_length=128)
    prefix = models.CharField(max_length=12)
    key_hash = models.CharField(max_length=64, unique=True)
    # Moderators may cut another speaker off (DELETE floor ?force=1).
    is_moderator = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.speaker})"


class SpectatorPresence(models.Model):
    """One open spectator socket, wherever it is served, so every worker can count them."""

    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="spectators")
    channel_name = models.CharField(max_length=200, unique=True)
    connected_at = models.DateTimeField(auto_now_add=True)
    seen_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["room", "seen_at"], name="presence_room")]

    def __str__(self) -> str:
        return f"{self.channel_name} in {self.room_id}"
