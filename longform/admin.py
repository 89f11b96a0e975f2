"""Admin: long text jobs (filterable, with progress and the finished file) and their pieces.

Read-only: jobs are made and moved through the API (longform.services), whose conditional
updates keep workers from racing; an edit here would bypass them.
"""

from __future__ import annotations

from django.contrib import admin
from django.db.models.functions import Substr
from django.urls import reverse
from django.utils.html import format_html

from longform.models import LongJob, LongPiece, LongStatus
from streams.admin import short, short_id


class LongPieceInline(admin.TabularInline):
    model = LongPiece
    fields = readonly_fields = ("index", "start", "end", "audio_bytes", "synth_s", "worker")
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LongJob)
class LongJobAdmin(admin.ModelAdmin):
    list_display = (
        "short_job_id",
        "created_at",
        "status",
        "progress",
        "text_chars",
        "voice",
        "response_format",
        "short_text",
        "download",
    )
    list_filter = ("status", "response_format", "is_archived", "error", "created_at")
    search_fields = ("id", "display_name", "voice", "error_detail")
    date_hierarchy = "created_at"
    readonly_fields = [field.name for field in LongJob._meta.fields] + ["download"]
    inlines = (LongPieceInline,)

    def get_queryset(self, request):
        # A text can be 100,000 characters: the list reads only its first 40.
        return super().get_queryset(request).annotate(preview=Substr("text", 1, 40)).defer("text")

    @admin.display(description="job", ordering="id")
    def short_job_id(self, job: LongJob) -> str:
        return short_id(job.pk)

    @admin.display(description="name / text")
    def short_text(self, job: LongJob) -> str:
        return job.display_name or short(getattr(job, "preview", job.text), 40)

    @admin.display(description="pieces")
    def progress(self, job: LongJob) -> str:
        percent = 100 * job.done_pieces / job.total_pieces if job.total_pieces else 0
        return f"{job.done_pieces}/{job.total_pieces} ({percent:.0f}%)"

    @admin.display(description="file")
    def download(self, job: LongJob) -> str:
        if job.status != LongStatus.COMPLETED or not job.output_name:
            return "-"
        url = reverse("long-job-download", args=[job.pk])
        return format_html('<a href="{}">{}</a>', url, job.response_format)

    def has_add_permission(self, request) -> bool:
        return False  # jobs are made through POST /v1/audio/speech/long


@admin.register(LongPiece)
class LongPieceAdmin(admin.ModelAdmin):
    list_display = ("job", "index", "start", "end", "audio_bytes", "synth_s", "worker")
    list_filter = ("worker", "created_at")
    search_fields = ("job__id",)
    readonly_fields = [field.name for field in LongPiece._meta.fields]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("job").defer("job__text")

    def has_add_permission(self, request) -> bool:
        return False
