"""Django's ASGI handler for the API, without the middleware only browser pages need.

Every `MiddlewareMixin` middleware runs its hooks through `sync_to_async` when Django serves
a request asynchronously: with the seven of the default stack that is fourteen hand-offs to
a thread per request, most of the CPU of a small request on our machines
(docs/benchmarks.md). The JSON API has no use for sessions, CSRF (API views are exempt;
writes carry a Bearer key), the auth middleware's `request.user`, messages or frame
options, so API paths go through this handler instead, with the security middleware's
header logic run inline (it does no I/O). The admin, the docs and every other page keep the
full stack.

It is also where the API answers, for every path, what no view should have to: a NUL
character in the path (404) or a query value (400 `invalid_<name>`), a body over the limit
(413, refused before it is read), a request Django cannot build (400), and the JSON answer to
exceptions a view let out (config/errors.py: 503 when the database is down).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qsl

from corsheaders.middleware import CorsMiddleware
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.exception import convert_exception_to_response
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.security import SecurityMiddleware
from django.utils.deprecation import MiddlewareMixin

from config.error_shapes import is_openai_path, reshape

# Paths of the JSON/audio API (seeds 000-004); everything else is a page.
OPERATOR_PREFIXES = (
    "/status",
    "/processing",
    "/history",
    "/stats",
    "/info",
    "/ping",
    "/config",
    "/endpoints",
    "/routes",
    "/languages",
)
API_PREFIXES = (
    "/audio",
    "/api/",
    "/v1/",
    "/chat",
    "/health",
    "/memory",
    # The seed's operator endpoints at their bare paths (speech/urls.py OPERATOR_ROUTES).
    *OPERATOR_PREFIXES,
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


_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def _refusal(code: str, detail: str, status: int, field: str | None = None) -> JsonResponse:
    response = JsonResponse({"error": code, "detail": detail, "field": field}, status=status)
    response["X-Content-Type-Options"] = "nosniff"
    return response


def body_limit(content_type: str, path: str = "") -> int:
    """Largest body in bytes an API request of this media type may have: multipart uploads
    (voices, transcriptions) up to PARLEY_MAX_UPLOAD_BYTES (each view checks its own smaller
    limit), anything else up to DATA_UPLOAD_MAX_MEMORY_SIZE, which Django refuses to read
    past anyway. Socket.IO's long-polling POSTs (`/socket.io/...`) up to engine.io's own
    buffer (recordings/sio.py), so an oversized chunk reaches our `chunk_too_large`."""
    if path.startswith("/socket.io/"):
        from recordings.sio import max_message_bytes

        return max_message_bytes()
    if content_type.split(";", 1)[0].strip().lower() == "multipart/form-data":
        return settings.PARLEY_MAX_UPLOAD_BYTES
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def preflight(scope: dict[str, Any]) -> JsonResponse | None:
    """The refusal of a request no view can serve, decided from its head alone; else None.

    - a NUL character in the path: 404 `not_found` (nothing is named with one; PostgreSQL
      refuses to even compare it, SQLite would just not find it);
    - a NUL character in a query value: 400 `invalid_<name>` (`invalid_query` if in a name);
    - a Content-Length that is not a number: 400 `invalid_content_length`;
    - a Content-Length over `body_limit`: 413 `body_too_large`, before the body is read.
    """
    if "\x00" in scope["path"]:
        return _refusal("not_found", "No endpoint at a path with a NUL character.", 404)
    query = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query:
        for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
            if "\x00" in name or not _NAME.fullmatch(name):
                break
            if "\x00" in value:
                return _refusal(
                    f"invalid_{name}", f"{name} must not contain NUL characters.", 400, name
                )
        return _refusal("invalid_query", "The query string must not contain NUL characters.", 400)
    headers = dict(scope.get("headers", ()))
    raw_length = headers.get(b"content-length")
    if raw_length is not None:
        try:
            length = int(raw_length)
            if length < 0:
                raise ValueError
        except ValueError:
            return _refusal(
                "invalid_content_length",
                "Content-Length must be a number of bytes.",
                400,
                "Content-Length",
            )
        limit = body_limit(headers.get(b"content-type", b"").decode("latin-1"))
        if length > limit:
            return _refusal(
                "body_too_large",
                f"The request body is {length} bytes; the largest accepted is {limit} bytes.",
                413,
            )
    return None


# The path of the request being answered: send_response, which sees only the response, asks
# it. Set in handle() before Django creates the request's tasks (they copy the context).
_request_path: ContextVar[str] = ContextVar("parley_request_path", default="")


def openai_shaped(response: HttpResponseBase) -> None:
    """Rewrite a JSON error `response` in OpenAI's shape (config/error_shapes.py), in place.

    Done here, where every answer of an API path passes (views, the handlers' refusals, the
    503 of a database outage, Django's own 404/413), so no error on an OpenAI-compatible
    path can leave in the other shape.
    """
    if response.streaming or not response.get("Content-Type", "").startswith("application/json"):
        return
    try:
        body = json.loads(response.content)  # type: ignore[attr-defined]
    except ValueError:
        return
    shaped = reshape(body, response.status_code)
    if shaped is None:
        return
    response.content = json.dumps(shaped).encode()  # type: ignore[attr-defined]
    if response.has_header("Content-Length"):
        response["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]


def with_cors(response: JsonResponse, scope: dict[str, Any]) -> JsonResponse:
    """`response` with the CORS headers its request's Origin gets, for the refusals sent
    before a request exists (so before the middleware): a page can read those too."""
    request = HttpRequest()
    request.method = scope.get("method", "GET")
    request.path = request.path_info = scope["path"]
    for name, value in scope.get("headers", ()):
        if name == b"origin":
            request.META["HTTP_ORIGIN"] = value.decode("latin-1")
    _cors.add_response_headers(request, response)
    return response


_cors = CorsMiddleware(lambda request: HttpResponse())


class OpenAIErrorShapeMiddleware(MiddlewareMixin):
    """The same rewrite for requests served through settings.MIDDLEWARE: Django's test
    client, and any API path served by the pages' stack, answer as the API handler does."""

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        if response.status_code >= 400 and is_openai_path(request.path):
            openai_shaped(response)
        return response


class ApiASGIHandler(ASGIHandler):
    def load_middleware(self, is_async: bool = False) -> None:
        from config.errors import exception_response  # config.errors imports is_api_path

        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []

        async def answer(request: HttpRequest) -> HttpResponseBase:
            try:
                return await self._get_response_async(request)
            except Exception as exc:
                response = exception_response(request, exc)
                if response is None:
                    raise  # a bug: Django logs it and answers handler500's JSON
                return response

        view: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = convert_exception_to_response(
            answer
        )
        # CORS (django-cors-headers, configured in settings): preflights answered here, the
        # headers added to every answer, errors included, so a page can read why.
        self._middleware_chain = convert_exception_to_response(
            InlineSecurityMiddleware(CorsMiddleware(view))
        )

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        _request_path.set(scope["path"])
        refusal = preflight(scope)
        if refusal is not None:
            with_cors(refusal, scope)
            await self.send_response(refusal, send)  # the body, if any, is never read
            return
        await super().handle(scope, receive, send)

    async def send_response(self, response: HttpResponseBase, send: Any) -> None:
        if response.status_code >= 400 and is_openai_path(_request_path.get()):
            openai_shaped(response)
        await super().send_response(response, send)

    def create_request(
        self, scope: dict[str, Any], body_file: Any
    ) -> tuple[HttpRequest | None, HttpResponse | None]:
        # Django answers a request it cannot build (undecodable path, ...) with a bare page.
        request, refusal = super().create_request(scope, body_file)
        if refusal is not None and refusal.status_code == 413:
            return None, with_cors(
                _refusal("body_too_large", "The request body is too large.", 413), scope
            )
        if refusal is not None:
            return None, with_cors(
                _refusal("bad_request", "The request cannot be read.", refusal.status_code), scope
            )
        return request, None
