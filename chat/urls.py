from django.urls import path, re_path

from chat import views

urlpatterns = [
    path("chat", views.chat_view, name="chat"),
    path("audio/stream", views.audio_stream_post_view, name="audio-stream"),
    path(
        "audio/stream/<str:request_id>",
        views.audio_stream_get_view,
        name="audio-stream-response",
    ),
    re_path(r"^audio/(?P<request_id>[0-9a-f]{32})\.wav$", views.audio_file_view, name="chat-audio"),
    path("api/rooms/<str:room>/say", views.say_view, name="room-say"),
]
