"""404 and 500 for the whole site: JSON on API paths (`{error, detail, field}`), pages elsewhere."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views import defaults

from config.handlers import is_api_path


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(
            {"error": "not_found", "detail": f"No endpoint at {request.path}.", "field": None},
            status=404,
        )
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(
            {"error": "server_error", "detail": "The server failed; it is logged.", "field": None},
            status=500,
        )
    return defaults.server_error(request)
