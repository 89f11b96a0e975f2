from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from streams import api
from streams.async_views import audio_view, room_events_view

urlpatterns = [
    path("audio", audio_view, name="audio"),
    path("api/rooms/<str:room>", api.RoomView.as_view(), name="room"),
    path("api/rooms/<str:room>/floor", api.FloorView.as_view(), name="room-floor"),
    path("api/rooms/<str:room>/events", room_events_view, name="room-events"),
    path("api/streams", api.StreamListView.as_view(), name="stream-list"),
    path("api/streams/<str:stream_id>", api.StreamDetailView.as_view(), name="stream-detail"),
    path(
        "api/streams/<str:stream_id>/audio.wav",
        api.StreamAudioView.as_view(),
        name="stream-audio",
    ),
    # Chat with spoken answers (seed 004) and POST /api/rooms/{room}/say: chat/urls.py.
    path("", include("chat.urls")),
    # Recording sessions (seed 001): force stop, saved files, records: recordings/urls.py.
    path("", include("recordings.urls")),
    # Speech synthesis (seed 002): /v1/audio/speech..., voices, progress, models, health.
    path("", include("speech.urls")),
    path("openapi.json", SpectacularAPIView.as_view(), name="openapi"),
    path("docs", SpectacularSwaggerView.as_view(url_name="openapi"), name="docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="openapi"), name="redoc"),
    path("admin/", admin.site.urls),
]
