"""Admin: every room, turn, stream, chunk, utterance and event, with an audio player."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from streams import selectors, services
from streams.models import (
    ACTIVE_TURN_STATUSES,
    ApiKey,
    Chunk,
    Room,
    RoomEvent,
    SpectatorPresence,
    Stream,
    Turn,
    Utterance,
)


class RecordAdmin(admin.ModelAdmin):
    """What happened, not a form: the log and the counters are only ever written by the
    services (an edited `next_emit_seq` or a deleted event would break the invariants).
    Moderators act through actions, like force-release."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Room)
class RoomAdmin(RecordAdmin):
    list_display = ("name", "last_event_id", "created_at")
    search_fields = ("name",)


@admin.action(description="Force-release the floor (cut the speaker off)")
def force_release(modeladmin, request, queryset) -> None:
    released = 0
    for turn in queryset.filter(status__in=ACTIVE_TURN_STATUSES):
        released += services.turn_force_release(turn_id=turn.pk)
    modeladmin.message_user(request, f"Released {released} turn(s).", messages.SUCCESS)


@admin.register(Turn)
class TurnAdmin(RecordAdmin):
    list_display = ("id", "room", "speaker", "status", "reason", "claimed_at", "release_at")
    list_filter = ("status", "room", "speaker", "claimed_at")
    search_fields = ("speaker", "id")
    actions = [force_release]
    date_hierarchy = "claimed_at"


class ChunkInline(admin.TabularInline):
    model = Chunk
    fields = ("seq", "size", "received_at", "offset_bytes", "play_start_at")
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(Stream)
class StreamAdmin(RecordAdmin):
    list_display = (
        "stream_id",
        "kind",
        "room",
        "speaker",
        "status",
        "duration",
        "chunk_count",
        "missing",
        "created_at",
    )
    list_filter = ("status", "kind", "room", "speaker", "created_at")
    search_fields = ("stream_id", "speaker", "speech_text")
    date_hierarchy = "created_at"
    readonly_fields = ("audio_player", "duration", "missing")
    inlines = [ChunkInline]

    @admin.display(description="duration")
    def duration(self, stream: Stream) -> str:
        return f"{selectors.stream_duration_ms(stream) / 1000:.2f} s"

    @admin.display(description="missing seqs")
    def missing(self, stream: Stream) -> str:
        gaps = selectors.stream_missing(stream)
        if not gaps.count:
            return "-"
        listed = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in gaps.ranges)
        return f"{gaps.count}: {listed}" + (
            " …" if sum(b - a + 1 for a, b in gaps.ranges) < gaps.count else ""
        )

    @admin.display(description="audio")
    def audio_player(self, stream: Stream) -> str:
        url = reverse("stream-audio", args=[stream.stream_id])
        return format_html('<audio controls preload="none" src="{}"></audio>', url)


@admin.register(Chunk)
class ChunkAdmin(RecordAdmin):
    list_display = ("stream", "seq", "size", "received_at", "play_start_at")
    list_filter = ("received_at",)
    search_fields = ("stream__stream_id",)
    exclude = ("data",)


@admin.register(Utterance)
class UtteranceAdmin(RecordAdmin):
    list_display = ("room", "speaker", "text", "duration_ms", "heard_ms", "published_at")
    list_filter = ("room", "speaker", "created_at")
    search_fields = ("text", "speaker")


@admin.register(RoomEvent)
class RoomEventAdmin(RecordAdmin):
    list_display = ("room", "seq", "type", "created_at")
    list_filter = ("type", "room", "created_at")
    readonly_fields = ("room", "seq", "type", "payload", "chunk", "created_at")


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "speaker", "is_moderator", "created_at", "last_used_at", "revoked_at")
    list_filter = ("is_moderator",)
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")


@admin.register(SpectatorPresence)
class SpectatorPresenceAdmin(RecordAdmin):
    list_display = ("room", "channel_name", "connected_at", "seen_at")
    list_filter = ("room",)
