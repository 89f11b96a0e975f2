"""The agent page: talk to the voice agent (WS /ws/agent) from a browser.

The page is a template plus static files (agents/static/agents/): agent.js opens the socket
and the microphone, mic-worklet.js downsamples the microphone to 16 kHz PCM16, and the agent's
audio plays through Web Audio. The room, if any, reaches the script as a data- attribute.
"""

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def agent_page_view(request: HttpRequest, room: str | None = None) -> HttpResponse:
    return render(request, "agents/agent.html", {"room": room or ""})
