"""Speech synthesis URLs: the /v1/ paths, and the seed's bare /audio/speech... as aliases.

The seed's operator endpoints (speech.operator_views) answer on their bare path and its /v1/
alias, plus the seed's extra names (/processing, /stats, ...): OPERATOR_ROUTES.
"""

from django.urls import path

from speech import operator_views as ops
from speech import views

_SPEECH = [
    ("audio/speech", views.speech_view, "speech"),
    ("audio/speech/stream", views.speech_stream_view, "speech-stream"),
    ("audio/speech/upload", views.speech_upload_view, "speech-upload"),
    ("audio/speech/stream/upload", views.speech_stream_upload_view, "speech-stream-upload"),
    ("audio/speech/cache", views.speech_cache_view, "speech-cache"),
]

# (bare route, view, name, extra aliases): each also answers at /v1/<route>.
OPERATOR_ROUTES = [
    ("status", ops.status_view, "status", ("processing", "processing/status")),
    ("status/history", ops.history_view, "status-history", ("history",)),
    ("status/statistics", ops.statistics_view, "status-statistics", ("stats",)),
    ("status/history/clear", ops.history_clear_view, "status-history-clear", ()),
    ("memory", ops.memory_view, "memory", ()),
    ("memory/reset", ops.memory_reset_view, "memory-reset", ()),
    ("memory/config", ops.memory_config_view, "memory-config", ()),
    ("memory/recommendations", ops.memory_recommendations_view, "memory-recommendations", ()),
    ("info", ops.info_view, "info", ()),
    ("ping", ops.ping_view, "ping", ()),
    ("config", ops.config_view, "config", ()),
    ("endpoints", ops.endpoints_view, "endpoints", ("routes",)),
    ("languages", ops.languages_view, "languages", ()),
]

urlpatterns = [
    *(path(f"v1/{route}", view, name=name) for route, view, name in _SPEECH),
    *(path(route, view, name=f"bare-{name}") for route, view, name in _SPEECH),
    # Before v1/voices/<name>: these names are routes, not voices (speech.voices reserves them).
    path("v1/voices/all-names", ops.voice_all_names_view, name="voice-all-names"),
    path("v1/voices/default", ops.default_voice_view, name="voice-default"),
    path("v1/voices", views.voices_view, name="voices"),
    path("v1/voices/<str:name>", ops.voice_view, name="voice"),
    path("v1/voices/<str:name>/download", views.voice_download_view, name="voice-download"),
    path("v1/voices/<str:name>/aliases", ops.voice_aliases_view, name="voice-aliases"),
    path("v1/voices/<str:name>/aliases/<str:alias>", ops.voice_alias_view, name="voice-alias"),
    path(
        "v1/audio/speech/jobs/<str:job_id>/audio.wav", views.job_audio_view, name="speech-job-audio"
    ),
    path("v1/status/progress", views.progress_view, name="speech-progress"),
    path("v1/status/progress/<str:job_id>", views.job_progress_view, name="speech-job-progress"),
    path("v1/models", views.models_view, name="models"),
    path("v1/models/<str:model>", views.model_view, name="model"),
    path("health", views.health_view, name="health"),
    path("v1/health", views.health_view, name="v1-health"),
    *(path(route, view, name=name) for route, view, name, _ in OPERATOR_ROUTES),
    *(path(f"v1/{route}", view, name=f"v1-{name}") for route, view, name, _ in OPERATOR_ROUTES),
    *(
        path(alias, view, name=f"{name}-{alias.replace('/', '-')}")
        for _, view, name, aliases in OPERATOR_ROUTES
        for alias in aliases
    ),
]
