"""How the API picks a response format: JSON, whatever the client asks for.

The API speaks JSON only (settings.REST_FRAMEWORK has no other renderer, and no `?format=`
override: a `format` query parameter is ignored rather than a 404 of a real resource). A
client whose Accept names no JSON (a browser's `text/html`, curl's `-H 'Accept: text/html'`)
still gets the JSON answer instead of DRF's 406: an API path never answers HTML.
"""

from __future__ import annotations

from rest_framework.exceptions import NotAcceptable
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request


class FirstRendererFallback(DefaultContentNegotiation):
    """DRF's negotiation, except that an Accept no renderer matches gets the view's first
    renderer (JSON on every API view) instead of 406 Not Acceptable."""

    def select_renderer(
        self, request: Request, renderers: list[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        try:
            return super().select_renderer(request, renderers, format_suffix)
        except NotAcceptable:
            return renderers[0], renderers[0].media_type
