"""Admin: every synthesis job (filterable) and every stored voice with its sample."""

from __future__ import annotations

from django.contrib import admin
from django.utils.html import format_html

from speech.models import SpeechJob, Voice


@admin.register(SpeechJob)
class SpeechJobAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "created_at",
        "kind",
        "status",
        "engine",
        "voice",
        "response_format",
        "text_chars",
        "progress",
        "audio_seconds",
        "ttfb_ms",
        "real_time_factor",
    )
    list_filter = (
        "status",
        "kind",
        "engine",
        "response_format",
        "stream_format",
        "endpoint",
        "error",
        "created_at",
    )
    search_fields = ("id", "text", "voice", "error_detail")
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in SpeechJob._meta.fields]

    @admin.display(description="chunk")
    def progress(self, job: SpeechJob) -> str:
        return f"{job.current_chunk}/{job.total_chunks}"

    def has_add_permission(self, request) -> bool:
        return False  # jobs are made by synthesis, not by hand


@admin.register(Voice)
class VoiceAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "engine", "preset", "sample_seconds", "language", "updated_at")
    list_filter = ("engine", "language")
    search_fields = ("name", "description", "preset")
    readonly_fields = (
        "sample_player",
        "sample_filename",
        "sample_content_type",
        "sample_bytes",
        "sample_seconds",
        "created_at",
        "updated_at",
    )

    def save_model(self, request, obj: Voice, form, change: bool) -> None:
        upload = form.cleaned_data.get("sample") if "sample" in form.changed_data else None
        if upload:  # a sample uploaded here: record what the API would have
            obj.sample_filename = upload.name
            obj.sample_content_type = getattr(upload, "content_type", "") or ""
            obj.sample_bytes = upload.size
            obj.preset = ""
        super().save_model(request, obj, form, change)

    @admin.display(description="listen")
    def sample_player(self, voice: Voice) -> str:
        url = f"/v1/voices/{voice.name}/download"
        return format_html('<audio controls preload="none" src="{}"></audio>', url)
