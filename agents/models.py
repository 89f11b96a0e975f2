"""Voice agent sessions (seed 003) and their exchanges: one user turn and the agent's reply.

A session is a room like any other: the user's utterances and the agent's replies are Streams
of the core (speakers `user:<session>` and `agent:<session>`); these records add what the
agent surface knows on top (transcripts, the reply's full and heard text, the latencies).
"""

from __future__ import annotations

import uuid

from django.db import models
from django.db.models import Q

from streams.models import Room, Stream


class TurnDetection(models.TextChoices):
    SERVER_VAD = "server_vad"
    MANUAL = "manual"


class AgentSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    room = models.ForeignKey(Room, on_delete=models.CASCADE, related_name="agent_sessions")
    user_speaker = models.CharField(max_length=128)
    agent_speaker = models.CharField(max_length=128)
    # Engines and settings in use (the last session.update wins; the history is in the log).
    stt_engine = models.CharField(max_length=64)
    tts_engine = models.CharField(max_length=64, blank=True)
    voice = models.CharField(max_length=128, blank=True)
    responder = models.CharField(max_length=128, blank=True)
    instructions = models.TextField(blank=True)
    turn_detection = models.CharField(
        max_length=16, choices=TurnDetection.choices, default=TurnDetection.SERVER_VAD
    )
    vad = models.JSONField(default=dict, blank=True)
    input_format = models.JSONField(default=dict, blank=True)
    output_format = models.JSONField(default=dict, blank=True)
    client_info = models.JSONField(default=dict, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    # Refreshed while the socket is open: a session of a crashed worker stops holding its room.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    end_reason = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-started_at"]
        constraints = [
            # One live agent per room, whatever the number of workers.
            models.UniqueConstraint(
                fields=["room"], condition=Q(ended_at__isnull=True), name="one_live_agent_per_room"
            )
        ]

    def __str__(self) -> str:
        return f"agent session {self.id} in {self.room_id}"


class Exchange(models.Model):
    """One exchange: what the user said (or typed) and what the agent answered."""

    session = models.ForeignKey(AgentSession, on_delete=models.CASCADE, related_name="exchanges")
    index = models.PositiveIntegerField()
    source = models.CharField(max_length=8, default="audio")  # "audio" or "text"
    user_utterance_id = models.CharField(max_length=128, blank=True)
    user_stream = models.ForeignKey(
        Stream, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    transcript = models.TextField(blank=True)
    user_started_at = models.DateTimeField(null=True, blank=True)
    # End of the user's turn: user.audio.end, the VAD's end-of-turn decision, or text.input.
    user_ended_at = models.DateTimeField(null=True, blank=True)
    reply_utterance_id = models.CharField(max_length=128, blank=True)
    agent_stream = models.ForeignKey(
        Stream, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    reply_text = models.TextField(blank=True)  # everything the responder produced
    heard_text = models.TextField(blank=True)  # what the listener heard (all of it unless cut)
    heard_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    interrupted = models.BooleanField(default=False)
    interrupted_by = models.CharField(max_length=16, blank=True)  # client, vad, disconnect
    responder = models.CharField(max_length=128, blank=True)
    error = models.CharField(max_length=255, blank=True)
    metrics = models.JSONField(default=dict, blank=True)  # the turn.metrics frame
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["session", "index"]
        constraints = [
            models.UniqueConstraint(fields=["session", "index"], name="agent_exchange_order")
        ]

    def __str__(self) -> str:
        return f"exchange {self.index} of {self.session_id}"
