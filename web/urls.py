from django.urls import path

from web import pages

urlpatterns = [
    path("", pages.home_page_view, name="home-page"),
    path("rooms/<str:room>/", pages.room_page_view, name="room-page"),
    path("tts/", pages.tts_page_view, name="tts-page"),
    path("favicon.ico", pages.favicon_view, name="favicon"),
    path("record/", pages.record_page_view, name="record-page"),
]
