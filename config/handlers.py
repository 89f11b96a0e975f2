"""Django's ASGI handler for the API, without the middleware only browser pages need.

Every `MiddlewareMixin` middleware runs its hooks through `sync_to_async` when Django serves
a request asynchronously: with the seven of the default stack that is fourteen hand-offs to
a thread per request, most of the CPU of a small request on our machines
(docs/benchmarks.md). The JSON API has no use for sessions, CSRF (API views are exempt;
writes carry a Bearer key), the auth middleware's `request.user`, messages or frame
options, so API paths go through this handler instead, with the security middleware's
header logic run inline (it does no I/O). The admin, the docs and every other page keep the
full stack.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponseBase
from django.middleware.security import SecurityMiddleware

# Paths of the JSON/audio API (seeds 000-004); everything else is a page.
API_PREFIXES = (
    "/audio",
    "/api/",
    "/v1/",
    "/chat",
    "/health",
    "/memory",
    "/streaming/",
    "/static/audio/",
    "/bench/",  # the benchmark's yardstick view goes the same way as the API it measures
)


def is_api_path(path: str) -> bool:
    return path.startswith(API_PREFIXES)


class InlineSecurityMiddleware(SecurityMiddleware):
    """SecurityMiddleware's redirect and headers, computed on the event loop."""

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.process_request(request)
        if response is None:
            response = await self.get_response(request)
        return self.process_response(request, response)


class ApiASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        view: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = convert_exception_to_response(
            self._get_response_async
        )
        self._middleware_chain = convert_exception_to_response(InlineSecurityMiddleware(view))
