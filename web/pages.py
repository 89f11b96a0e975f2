"""The pages a person opens in a browser (issue 9): server-rendered templates over the API.

Each page is a template (web/templates/web/) plus plain static JS and CSS (web/static/web/),
no build step. The pages call the same public API as any client; they hold no logic of their
own beyond rendering what the server already knows at request time.
"""

from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static

from streams.errors import ApiError
from streams.services import validate_room_name


def home_page_view(request: HttpRequest) -> HttpResponse:
    """`/`: what Parley is, the live rooms (updated live) and links to every page."""
    return render(request, "web/home.html", {"page": "home"})


def room_page_view(request: HttpRequest, room: str) -> HttpResponse:
    """`/rooms/<room>/`: a spectator of one room (floor, timeline, transcript, audio).

    A name no room can have answers 400 with the reason, on the page rather than as JSON."""
    try:
        validate_room_name(room)
    except ApiError as exc:
        context = {"page": "room", "room": room, "error": exc.detail}
        return render(request, "web/room.html", context, status=400)
    return render(request, "web/room.html", {"page": "room", "room": room})


def tts_page_view(request: HttpRequest) -> HttpResponse:
    """`/tts/`: a playground for /v1/audio/speech."""
    return render(request, "web/tts.html", {"page": "tts"})


def record_page_view(request: HttpRequest) -> HttpResponse:
    """`/record/`: record from the microphone into /streaming (Socket.IO)."""
    return render(request, "web/record.html", {"page": "record"})


def favicon_view(request: HttpRequest) -> HttpResponse:
    """`/favicon.ico`: a permanent redirect to the SVG icon the pages link (browsers ask for
    /favicon.ico on their own, before or without reading the page's `<link rel="icon">`)."""
    return HttpResponseRedirect(static("web/favicon.svg"), status=301)
