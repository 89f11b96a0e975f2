"""CORS for the seed-004 endpoints (its "CORS headers included for web application support").

A page on another origin POSTs JSON to /chat (a non-simple request: the browser sends an
OPTIONS preflight first), then plays /audio/stream/{id} and reads its X-* headers. Allowed
origins come from PARLEY_CHAT_CORS_ORIGINS: "*" (the default) or a comma-separated list, each
matched exactly and echoed back with `Vary: Origin`.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

View = Callable[..., Awaitable[HttpResponse]]
# Request headers a page may send: JSON bodies and API keys.
ALLOWED_HEADERS = "Content-Type, Authorization"
PREFLIGHT_MAX_AGE_S = 600


def allowed_origin(origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for a request from `origin` (None: no CORS)."""
    configured = [o.strip() for o in str(settings.PARLEY_CHAT_CORS_ORIGINS).split(",")]
    configured = [o for o in configured if o]
    if "*" in configured:
        return "*"
    return origin if origin is not None and origin in configured else None


def _exposed(response: HttpResponse) -> str:
    # A page's script may read only the headers named here: the audio's format headers.
    return ", ".join(name for name in response.headers if name.lower().startswith("x-"))


def cors(*methods: str) -> Callable[[View], View]:
    """Answer the preflight OPTIONS for `methods` and add the CORS headers to every answer
    (errors too, so a page can read why it was refused)."""

    def decorate(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            origin = allowed_origin(request.headers.get("Origin"))
            if request.method == "OPTIONS":
                response = HttpResponse(status=204)
                response["Allow"] = ", ".join((*methods, "OPTIONS"))
                if origin is not None:
                    response["Access-Control-Allow-Methods"] = ", ".join((*methods, "OPTIONS"))
                    response["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
                    response["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
            else:
                response = await view(request, *args, **kwargs)
                if origin is not None and (exposed := _exposed(response)):
                    response["Access-Control-Expose-Headers"] = exposed
            if origin is not None:
                response["Access-Control-Allow-Origin"] = origin
            if origin != "*":
                response["Vary"] = "Origin"  # the answer depends on who asks
            return response

        return wrapper

    return decorate
