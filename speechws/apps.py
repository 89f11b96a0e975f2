from django.apps import AppConfig


class SpeechWsConfig(AppConfig):
    name = "speechws"
    verbose_name = "Speech over WebSocket"
    default_auto_field = "django.db.models.BigAutoField"
