"""Admin: every synthesis job (filterable) and every stored voice with its sample."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from speech.job_audio import job_audio_path
from speech.models import SpeechJob, Voice, VoiceAlias
from streams.admin import audio_player, short, short_id


@admin.register(SpeechJob)
class SpeechJobAdmin(admin.ModelAdmin):
    # Each job's audio is kept on disk, bounded (speech/job_audio.py): a player while kept.
    list_display = (
        "short_job_id",
        "created_at",
        "kind",
        "status",
        "engine",
        "voice",
        "short_text",
        "audio_s",
        "ttfb",
        "real_time_factor",
        "cache",
        "player",
    )
    list_filter = (
        "status",
        "cache",
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
    readonly_fields = ["player", *(field.name for field in SpeechJob._meta.fields)]

    @admin.display(description="audio file")
    def player(self, job: SpeechJob) -> str:
        if job_audio_path(job.pk) is None:
            return "-"
        return audio_player(reverse("speech-job-audio", args=[str(job.pk)]))

    @admin.display(description="job", ordering="id")
    def short_job_id(self, job: SpeechJob) -> str:
        return short_id(job.pk)

    @admin.display(description="text", ordering="text_chars")
    def short_text(self, job: SpeechJob) -> str:
        return short(job.text, 40)

    @admin.display(description="audio", ordering="audio_seconds")
    def audio_s(self, job: SpeechJob) -> str:
        return f"{job.audio_seconds:.2f} s"

    @admin.display(description="first byte", ordering="ttfb_ms")
    def ttfb(self, job: SpeechJob) -> str:
        return "-" if job.ttfb_ms is None else f"{job.ttfb_ms:.0f} ms"

    @admin.display(description="chunk")
    def progress(self, job: SpeechJob) -> str:
        return f"{job.current_chunk}/{job.total_chunks}"

    def has_add_permission(self, request) -> bool:
        return False  # jobs are made by synthesis, not by hand


class VoiceAliasInline(admin.TabularInline):
    """Read-only: aliases are added through the API, which checks they shadow no voice."""

    model = VoiceAlias
    fields = readonly_fields = ("alias", "created_at")
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Voice)
class VoiceAdmin(admin.ModelAdmin):
    inlines = (VoiceAliasInline,)
    list_display = ("name", "kind", "engine", "preset", "sample_seconds", "listen", "updated_at")
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
    def listen(self, voice: Voice) -> str:
        if not voice.sample:
            return "-"
        return audio_player(reverse("voice-download", args=[voice.name]))

    @admin.display(description="listen")
    def sample_player(self, voice: Voice) -> str:
        url = f"/v1/voices/{voice.name}/download"
        return format_html('<audio controls preload="none" src="{}"></audio>', url)
