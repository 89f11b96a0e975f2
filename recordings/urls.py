from django.urls import path

from recordings import views

urlpatterns = [
    path("streaming/force_stop", views.force_stop_view, name="streaming-force-stop"),
    path("static/audio/<str:sid>.wav", views.audio_file_view, name="recording-file"),
    path("api/recordings", views.RecordingListView.as_view(), name="recording-list"),
    path("api/recordings/<str:sid>", views.RecordingDetailView.as_view(), name="recording-detail"),
]
