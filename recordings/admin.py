"""Admin: every recording with its status, sizes, an audio player, and a rebuild action."""

from __future__ import annotations

from django.contrib import admin, messages
from django.urls import reverse
from django.utils.html import format_html

from recordings import services
from recordings.models import Recording, RecordingStatus
from streams.admin import audio_player, short
from streams.errors import ApiError


@admin.action(description="Stop and (re)build the WAV file from the stored chunks")
def rebuild_file(modeladmin, request, queryset) -> None:
    built, failed = 0, []
    for recording in queryset.exclude(status=RecordingStatus.EMPTY):
        try:
            services.recording_stop(recording_id=recording.pk, refuse_empty=False)
            built += 1
        except ApiError as exc:
            failed.append(f"{recording.sid}: {exc.detail}")
    modeladmin.message_user(request, f"Built {built} file(s).", messages.SUCCESS)
    for line in failed:
        modeladmin.message_user(request, line, messages.ERROR)


@admin.register(Recording)
class RecordingAdmin(admin.ModelAdmin):
    list_display = (
        "sid",
        "status",
        "transport",
        "speaker",
        "chunks",
        "duration",
        "player",
        "created_at",
    )
    list_filter = ("status", "transport", "container", "created_at")
    search_fields = ("stream__stream_id", "stream__speaker")
    date_hierarchy = "created_at"
    list_select_related = ("stream",)
    actions = [rebuild_file]
    exclude = ("key_hash",)
    readonly_fields = (
        "audio_player",
        "stream_link",
        "status",
        "error",
        "transport",
        "channel_name",
        "container",
        "decode_rate_hz",
        "decode_channels",
        "broadcast",
        "base_url",
        "wav_sample_rate_hz",
        "wav_channels",
        "wav_bytes_per_sample",
        "file_bytes",
        "duration_ms",
        "created_at",
        "stopped_at",
        "completed_at",
        "stream",
    )

    def has_add_permission(self, request) -> bool:
        return False  # recordings come from sockets only

    @admin.display(description="streaming id", ordering="stream__stream_id")
    def sid(self, recording: Recording) -> str:
        return short(recording.sid, 24)

    @admin.display(description="audio")
    def player(self, recording: Recording) -> str:
        if recording.status != RecordingStatus.COMPLETE:
            return "-"
        return audio_player(reverse("recording-file", args=[recording.sid]))

    @admin.display(description="speaker", ordering="stream__speaker")
    def speaker(self, recording: Recording) -> str:
        return recording.stream.speaker

    @admin.display(description="chunks")
    def chunks(self, recording: Recording) -> int:
        return recording.stream.chunk_count

    @admin.display(description="duration", ordering="duration_ms")
    def duration(self, recording: Recording) -> str:
        return "-" if recording.duration_ms is None else f"{recording.duration_ms / 1000:.2f} s"

    @admin.display(description="stream (chunks)")
    def stream_link(self, recording: Recording) -> str:
        url = reverse("admin:streams_stream_change", args=[recording.stream_id])
        return format_html('<a href="{}">{}</a>', url, recording.sid)

    @admin.display(description="audio")
    def audio_player(self, recording: Recording) -> str:
        if recording.status != RecordingStatus.COMPLETE:
            return f"no file yet ({recording.status})"
        url = reverse("recording-file", args=[recording.sid])
        return format_html('<audio controls preload="none" src="{}"></audio>', url)
