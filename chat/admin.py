from django.contrib import admin
from django.utils.html import format_html

from chat.models import ChatExchange


@admin.register(ChatExchange)
class ChatExchangeAdmin(admin.ModelAdmin):
    list_display = (
        "created_at",
        "user",
        "short_text",
        "provider_used",
        "processing_time",
        "use_tts",
        "stream_audio",
        "audio_status",
    )
    list_filter = ("provider_used", "audio_status", "use_tts", "stream_audio")
    search_fields = ("request_id", "user", "text", "response")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in ChatExchange._meta.fields if f.name != "audio_wav"] + [
        "audio"
    ]
    exclude = ("audio_wav",)

    @admin.display(description="text")
    def short_text(self, obj: ChatExchange) -> str:
        return obj.text[:60]

    @admin.display(description="audio")
    def audio(self, obj: ChatExchange) -> str:
        if obj.audio_status != "ready":
            return "-"
        return format_html('<audio controls src="/audio/{}.wav"></audio>', obj.request_id)

    def has_add_permission(self, request) -> bool:
        return False
