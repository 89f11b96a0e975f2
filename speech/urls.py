"""Speech synthesis URLs: the /v1/ paths, and the seed's bare /audio/speech... as aliases."""

from django.urls import path

from speech import views

_SPEECH = [
    ("audio/speech", views.speech_view, "speech"),
    ("audio/speech/stream", views.speech_stream_view, "speech-stream"),
    ("audio/speech/upload", views.speech_upload_view, "speech-upload"),
    ("audio/speech/stream/upload", views.speech_stream_upload_view, "speech-stream-upload"),
]

urlpatterns = [
    *(path(f"v1/{route}", view, name=name) for route, view, name in _SPEECH),
    *(path(route, view, name=f"bare-{name}") for route, view, name in _SPEECH),
    path("v1/voices", views.voices_view, name="voices"),
    path("v1/voices/<str:name>", views.voice_view, name="voice"),
    path("v1/voices/<str:name>/download", views.voice_download_view, name="voice-download"),
    path("v1/status/progress", views.progress_view, name="speech-progress"),
    path("v1/status/progress/<str:job_id>", views.job_progress_view, name="speech-job-progress"),
    path("v1/models", views.models_view, name="models"),
    path("v1/models/<str:model>", views.model_view, name="model"),
    path("health", views.health_view, name="health"),
    path("memory", views.memory_view, name="memory"),
]
