"""Long text job URLs: /v1/audio/speech/long... and the seed system's bare aliases."""

from django.urls import path

from longform import views

_LONG = [
    ("audio/speech/long", views.jobs_view, "long-jobs"),
    ("audio/speech/long-history", views.history_view, "long-history"),
    ("audio/speech/long-history/stats", views.history_stats_view, "long-history-stats"),
    ("audio/speech/long/<str:job_id>", views.job_view, "long-job"),
    ("audio/speech/long/<str:job_id>/pause", views.job_pause_view, "long-job-pause"),
    ("audio/speech/long/<str:job_id>/resume", views.job_resume_view, "long-job-resume"),
    ("audio/speech/long/<str:job_id>/retry", views.job_retry_view, "long-job-retry"),
    ("audio/speech/long/<str:job_id>/download", views.job_download_view, "long-job-download"),
    ("audio/speech/long/<str:job_id>/sse", views.job_sse_view, "long-job-sse"),
]

urlpatterns = [
    *(path(f"v1/{route}", view, name=name) for route, view, name in _LONG),
    *(path(route, view, name=f"bare-{name}") for route, view, name in _LONG),
]
