from django.apps import AppConfig


class SpectateConfig(AppConfig):
    name = "spectate"
    verbose_name = "Spectators"
