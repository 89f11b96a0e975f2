"""Admin: every room (with its timeline), turn, stream, chunk, utterance and event, with audio
players on the lists; columns sized for a laptop screen."""

from __future__ import annotations

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
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
from streams.timeline import room_timeline


def audio_player(url: str) -> str:
    """A compact `<audio>` for list pages and the timeline. `preload="none"`: a page of 100
    rows fetches nothing until a player is pressed (the audio URLs answer Range requests)."""
    # Sized by templates/admin/base_site.html's stylesheet, to fit a table row.
    return format_html('<audio controls preload="none" src="{}"></audio>', url)


def short(text: object, length: int = 40) -> str:
    """`text` cut to `length` characters with an ellipsis; the whole of it on hover."""
    value = str(text or "")
    if len(value) <= length:
        return value
    return format_html('<span title="{}">{}…</span>', value, value[: length - 1])


def short_id(value: object) -> str:
    """The first 8 characters of a UUID, the whole id on hover."""
    return format_html('<code title="{}">{}</code>', value, str(value)[:8])


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
    list_display = ("name", "timeline_link", "last_event_id", "created_at")
    search_fields = ("name",)
    readonly_fields = ("name", "timeline_link", "last_event_id", "created_at")

    def get_urls(self):
        timeline = path(
            "<path:object_id>/timeline/",
            self.admin_site.admin_view(self.timeline_view),
            name="streams_room_timeline",
        )
        return [timeline, *super().get_urls()]

    @admin.display(description="timeline")
    def timeline_link(self, room: Room) -> str:
        url = reverse("admin:streams_room_timeline", args=[room.pk])
        return format_html('<a href="{}">turns, streams, events</a>', url)

    def timeline_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """GET …/room/<id>/timeline/[?before=<seq>]: the room's turns → streams (players) →
        events with millisecond times, newest page of events first (streams/timeline.py)."""
        room = get_object_or_404(Room, pk=object_id) if object_id.isdigit() else None
        if room is None:
            raise Http404("no such room")
        if not self.has_view_permission(request, room):
            raise PermissionDenied
        before = request.GET.get("before", "")
        timeline = room_timeline(room=room, before=int(before) if before.isdigit() else None)
        context = {
            **self.admin_site.each_context(request),
            "opts": self.model._meta,
            "room": room,
            "timeline": timeline,
            "title": f"Timeline of {room.name}",
        }
        return TemplateResponse(request, "admin/streams/room/timeline.html", context)


@admin.action(description="Force-release the floor (cut the speaker off)")
def force_release(modeladmin, request, queryset) -> None:
    released = 0
    for turn in queryset.filter(status__in=ACTIVE_TURN_STATUSES):
        released += services.turn_force_release(turn_id=turn.pk)
    modeladmin.message_user(request, f"Released {released} turn(s).", messages.SUCCESS)


@admin.register(Turn)
class TurnAdmin(RecordAdmin):
    list_display = ("short_turn_id", "room", "speaker", "status", "reason", "claimed_at")
    list_select_related = ("room",)
    list_filter = ("status", "room", "speaker", "claimed_at")
    search_fields = ("speaker", "id")
    actions = [force_release]
    date_hierarchy = "claimed_at"

    @admin.display(description="turn", ordering="id")
    def short_turn_id(self, turn: Turn) -> str:
        return short_id(turn.pk)


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
        "short_stream_id",
        "room",
        "speaker",
        "status",
        "duration",
        "chunk_count",
        "player",
        "created_at",
    )
    list_select_related = ("room",)
    list_filter = ("status", "kind", "room", "speaker", "created_at")
    search_fields = ("stream_id", "speaker", "speech_text", "script")
    date_hierarchy = "created_at"
    readonly_fields = ("audio_player", "duration", "missing")
    inlines = [ChunkInline]

    @admin.display(description="stream", ordering="stream_id")
    def short_stream_id(self, stream: Stream) -> str:
        return short(stream.stream_id, 24)

    @admin.display(description="audio")
    def player(self, stream: Stream) -> str:
        if not stream.total_bytes:
            return "-"
        return audio_player(reverse("stream-audio", args=[stream.stream_id]))

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
    list_display = (
        "room",
        "speaker",
        "short_text",
        "unsaid",
        "duration_ms",
        "heard_ms",
        "published_at",
    )
    list_select_related = ("room",)
    list_filter = ("room", "speaker", "created_at")
    search_fields = ("text", "script", "speaker")

    @admin.display(description="said", ordering="text")
    def short_text(self, utterance: Utterance) -> str:
        return short(utterance.text, 60)

    @admin.display(description="script not said (cut off)")
    def unsaid(self, utterance: Utterance) -> str:
        # The part of the script after what was heard: what a cut kept from the room.
        script, said = utterance.script, utterance.text
        if not script or script.strip() == said.strip():
            return "-"
        rest = script[len(said) :] if script.startswith(said) else script
        return short(rest.strip(), 60)


@admin.register(RoomEvent)
class RoomEventAdmin(RecordAdmin):
    list_display = ("room", "seq", "type", "summary", "created_at")
    list_select_related = ("room",)

    @admin.display(description="speaker, input, text")
    def summary(self, event: RoomEvent) -> str:
        payload = event.payload
        parts = [payload.get(k) for k in ("speaker", "name", "stream_id", "status", "text")]
        return short(" · ".join(str(p) for p in parts if p), 60)

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
