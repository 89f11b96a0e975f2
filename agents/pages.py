"""The agent page (placeholder until the page lands)."""

from django.http import HttpRequest, HttpResponse


def agent_page_view(request: HttpRequest, room: str | None = None) -> HttpResponse:
    return HttpResponse("agent page", content_type="text/plain")
