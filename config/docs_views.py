"""The docs pages, Swagger UI (/docs) and ReDoc (/redoc): drf-spectacular's views, except
that OPTIONS is answered with their Allow header. DRF's own OPTIONS answer (metadata) goes
through the page's template renderer, which has no template for it: it was a 500."""

from __future__ import annotations

from typing import Any

from django.http import HttpResponse
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request


class _DocsPage:
    def options(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        return HttpResponse(status=200, headers={"Allow": "GET, HEAD, OPTIONS"})


class SwaggerView(_DocsPage, SpectacularSwaggerView):
    """/docs: Swagger UI."""


class RedocView(_DocsPage, SpectacularRedocView):
    """/redoc: ReDoc."""
