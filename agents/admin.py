"""Admin: voice agent sessions with their transcript in order, players and latencies."""

from __future__ import annotations

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join

from agents.models import AgentSession, Exchange
from streams.admin import RecordAdmin, audio_player, short, short_id
from streams.models import Stream


def _player(stream: Stream | None) -> str:
    if stream is None or not stream.total_bytes:
        return "-"
    # /api/streams/{id}/audio.wav answers Range requests: the player can seek.
    return audio_player(reverse("stream-audio", args=[stream.stream_id]))


def _ms(value: int | None) -> str:
    return "-" if value is None else f"{value} ms"


class ExchangeColumns:
    """Columns the session's inline and the exchange list both show."""

    @admin.display(description="reply latency")
    def latency(self, obj: Exchange) -> str:
        return _ms(obj.metrics.get("reply_latency_ms"))

    @admin.display(description="breakdown")
    def breakdown(self, obj: Exchange) -> str:
        return _breakdown(obj)

    @admin.display(description="agent audio")
    def agent_audio(self, obj: Exchange) -> str:
        return _player(obj.agent_stream)


class ExchangeInline(ExchangeColumns, admin.StackedInline):
    model = Exchange
    fields = (
        "index",
        "source",
        "transcript",
        "user_audio",
        "said",
        "agent_audio",
        "latency",
        "breakdown",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True
    ordering = ("index",)

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    @admin.display(description="user audio")
    def user_audio(self, obj: Exchange) -> str:
        return _player(obj.user_stream)

    @admin.display(description="agent said")
    def said(self, obj: Exchange) -> str:
        if not obj.interrupted:
            return obj.reply_text or "-"
        # The cut: what was heard, then the rest the listener never heard, struck through.
        rest = (
            obj.reply_text[len(obj.heard_text) :]
            if obj.reply_text.startswith(obj.heard_text)
            else ""
        )
        return format_html(
            "{} <b>✂ cut at {} ms by {}</b> <s>{}</s>",
            obj.heard_text,
            obj.heard_ms,
            obj.interrupted_by,
            rest,
        )


_METRICS = (
    ("vad_wait_ms", "VAD end-of-turn wait"),
    ("stt_ms", "STT final"),
    ("stt_compute_ms", "STT compute"),
    ("first_token_ms", "first token"),
    ("first_audio_ms", "first audio"),
    ("duration_ms", "reply audio"),
    ("heard_ms", "heard"),
)


def _breakdown(obj: Exchange) -> str:
    rows = [(label, _ms(obj.metrics.get(key))) for key, label in _METRICS if key in obj.metrics]
    if obj.metrics.get("stt_speculative"):
        rows.append(("STT", "speculative transcript used"))
    if not rows:
        return "-"
    return format_html_join(", ", "{}: {}", rows)


@admin.register(AgentSession)
class AgentSessionAdmin(RecordAdmin):
    list_display = (
        "short_session_id",
        "room",
        "started_at",
        "ended_at",
        "end_reason",
        "exchange_count",
        "engines",
    )
    list_filter = ("end_reason", "turn_detection", "stt_engine", "tts_engine", "started_at")
    search_fields = ("id", "room__name", "user_speaker", "agent_speaker")
    date_hierarchy = "started_at"
    readonly_fields = [f.name for f in AgentSession._meta.fields]
    inlines = [ExchangeInline]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("room")

    @admin.display(description="exchanges")
    def exchange_count(self, obj: AgentSession) -> int:
        return obj.exchanges.count()

    @admin.display(description="session", ordering="id")
    def short_session_id(self, obj: AgentSession) -> str:
        return short_id(obj.pk)

    @admin.display(description="turn detection · STT · TTS · responder")
    def engines(self, obj: AgentSession) -> str:
        return " · ".join((obj.turn_detection, obj.stt_engine, obj.tts_engine, obj.responder))


@admin.register(Exchange)
class ExchangeAdmin(ExchangeColumns, RecordAdmin):
    list_display = (
        "short_session",
        "index",
        "source",
        "short_transcript",
        "short_reply",
        "interrupted",
        "heard",
        "latency",
        "agent_audio",
    )
    list_filter = ("interrupted", "source", "interrupted_by", "created_at")
    search_fields = ("transcript", "reply_text", "session__id")
    readonly_fields = [f.name for f in Exchange._meta.fields] + ["breakdown", "agent_audio"]
    list_select_related = ("session", "agent_stream")

    @admin.display(description="session", ordering="session_id")
    def short_session(self, obj: Exchange) -> str:
        return short_id(obj.session_id)

    @admin.display(description="user said")
    def short_transcript(self, obj: Exchange) -> str:
        return short(obj.transcript, 40)

    @admin.display(description="agent said")
    def short_reply(self, obj: Exchange) -> str:
        return short(obj.heard_text if obj.interrupted else obj.reply_text, 40)

    @admin.display(description="heard")
    def heard(self, obj: Exchange) -> str:
        return _ms(obj.heard_ms)
