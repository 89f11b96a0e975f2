from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularJSONAPIView

from config.docs_views import AsyncApiView, RedocView, SwaggerView
from config.errors import not_found
from streams import api
from streams.async_views import audio_view, room_events_view

urlpatterns = [
    path("audio", audio_view, name="audio"),
    path("api/rooms", api.RoomListView.as_view(), name="room-list"),
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
    # Long text jobs (issue 10 §3): /v1/audio/speech/long...: longform/urls.py.
    path("", include("longform.urls")),
    # Voice agent (seed 003): /v1/audio/transcriptions and the /agent/ page: agents/urls.py.
    path("", include("agents.urls")),
    # Pages a person opens in a browser (/, /rooms/<room>/, /tts/, /record/): web/urls.py.
    path("", include("web.urls")),
    path("openapi.json", SpectacularJSONAPIView.as_view(), name="openapi"),
    # The sockets (WebSocket and Socket.IO) in AsyncAPI 3.0: docs/asyncapi.yaml.
    path("asyncapi.yaml", AsyncApiView.as_view(), name="asyncapi"),
    path("docs", SwaggerView.as_view(url_name="openapi"), name="docs"),
    path("redoc", RedocView.as_view(url_name="openapi"), name="redoc"),
    path("admin/", admin.site.urls),
    # Anything else under an API prefix: a JSON 404, in DEBUG too (Django's debug 404 is HTML).
    re_path(
        r"^(?:audio|api|v1|chat|health|memory|streaming|static/audio|status|processing|history"
        r"|stats|info|ping|config|endpoints|routes|languages)(?:/.*)?$",
        not_found,
    ),
]

# API paths answer errors in JSON like every other API error; pages keep Django's pages.
handler400 = "config.errors.bad_request"
handler403 = "config.errors.permission_denied"
handler404 = "config.errors.not_found"
handler500 = "config.errors.server_error"
