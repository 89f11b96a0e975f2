"""The docs pages, Swagger UI (/docs) and ReDoc (/redoc): drf-spectacular's views, except
that OPTIONS is answered with their Allow header. DRF's own OPTIONS answer (metadata) goes
through the page's template renderer, which has no template for it: it was a 500.

/asyncapi.yaml: the sockets' AsyncAPI document (docs/asyncapi.yaml), served as written."""

from __future__ import annotations

from functools import cache
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views import View
from drf_spectacular.views import SpectacularRedocView, SpectacularSwaggerView
from rest_framework.request import Request


class _DocsPage:
    def options(self, request: Request, *args: Any, **kwargs: Any) -> HttpResponse:
        return HttpResponse(status=200, headers={"Allow": "GET, HEAD, OPTIONS"})


class SwaggerView(_DocsPage, SpectacularSwaggerView):
    """/docs: Swagger UI."""


class RedocView(_DocsPage, SpectacularRedocView):
    """/redoc: ReDoc."""


@cache
def _asyncapi_document() -> bytes:
    # Read once per process: the file is part of the release, like the code.
    return (settings.BASE_DIR / "docs" / "asyncapi.yaml").read_bytes()


class AsyncApiView(View):
    """/asyncapi.yaml: the WebSocket and Socket.IO surfaces (AsyncAPI 3.0), beside the
    OpenAPI schema of the HTTP API. GET and HEAD; OPTIONS lists them."""

    http_method_names = ["get", "head", "options"]

    async def get(self, request: HttpRequest) -> HttpResponse:
        return HttpResponse(_asyncapi_document(), content_type="application/yaml; charset=utf-8")
