"""Error answers for the whole site: JSON on API paths (`{error, detail, field}`), pages elsewhere.

Django's handlers (404, 400, 403, 500) are wired in config/urls.py; `exception_response` is what
the API's ASGI handler (config/handlers.py) asks first about any exception a view let out, so
a database outage is a 503 with `Retry-After` and a NUL character a 400, never a 500.
"""

from __future__ import annotations

import logging

from django.core.exceptions import (
    BadRequest,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.db import DataError, InterfaceError, OperationalError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.multipartparser import MultiPartParserError
from django.views import defaults

from config.handlers import is_api_path
from streams.errors import echoed

logger = logging.getLogger(__name__)

# Seconds a client is told to wait (Retry-After) when the database does not answer: about
# what a PostgreSQL restart or a failover takes.
RETRY_AFTER_S = 5


def error_response(
    code: str, detail: str, status: int, *, field: str | None = None
) -> JsonResponse:
    """The API's error shape as a response."""
    return JsonResponse({"error": code, "detail": detail, "field": field}, status=status)


def not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return error_response("not_found", f"No endpoint at {echoed(request.path)}.", 404)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return error_response("server_error", "The server failed; it is logged.", 500)
    return defaults.server_error(request)


def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler400: a request Django refused (SuspiciousOperation, BadRequest, bad multipart).

    On API paths: 413 `body_too_large` for a body over DATA_UPLOAD_MAX_MEMORY_SIZE, 400
    `too_many_fields` / `malformed_multipart` / `bad_request` otherwise.
    """
    if not is_api_path(request.path):
        return defaults.bad_request(request, exception)
    if isinstance(exception, RequestDataTooBig):
        return body_too_large()
    if isinstance(exception, TooManyFieldsSent | TooManyFilesSent):
        return error_response("too_many_fields", str(exception), 400)
    if isinstance(exception, MultiPartParserError):
        return error_response(
            "malformed_multipart", f"The multipart body is invalid: {exception}.", 400
        )
    detail = str(exception) if isinstance(exception, BadRequest) and str(exception) else ""
    return error_response("bad_request", detail or "The request is malformed.", 400)


def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler403: JSON `forbidden` on API paths."""
    if is_api_path(request.path):
        return error_response("forbidden", str(exception or "") or "Not allowed.", 403)
    return defaults.permission_denied(request, exception)


def body_too_large(limit: int | None = None) -> JsonResponse:
    """413 `body_too_large` (the limit in bytes in the sentence when known)."""
    detail = "The request body is too large"
    detail += f"; the largest accepted is {limit} bytes." if limit is not None else "."
    return error_response("body_too_large", detail, 413)


def unavailable() -> JsonResponse:
    """503 `unavailable` with `Retry-After`: the database does not answer for now."""
    response = error_response(
        "unavailable",
        "The database is unavailable for now; retry after the Retry-After seconds.",
        503,
    )
    response["Retry-After"] = str(RETRY_AFTER_S)
    return response


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database cannot be reached (refused, dropped, pool timed out).

    Django wraps the driver's errors in django.db's classes, but a few paths (the psycopg
    pool's own timeout, a connection closed under a cursor) raise psycopg's directly.
    """
    if isinstance(exc, OperationalError | InterfaceError):
        return True
    try:
        import psycopg
    except ImportError:  # SQLite-only installs
        return False
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def exception_response(request: HttpRequest, exc: Exception) -> HttpResponse | None:
    """The API's answer to an exception a view let out, or None to let Django answer (500).

    - the database unreachable: 503 `unavailable` with `Retry-After`;
    - a NUL character PostgreSQL refused to store or compare: 400 `invalid_request`;
    - Http404 / PermissionDenied / SuspiciousOperation / BadRequest / bad multipart: the JSON
      404 / 403 / 400 (413 for a body too large) of the handlers above.
    """
    if database_unavailable(exc):
        logger.warning("%s %s: database unavailable: %s", request.method, request.path, exc)
        return unavailable()
    if isinstance(exc, DataError) and "NUL" in str(exc):
        return error_response(
            "invalid_request", "Text must not contain NUL (\\u0000) characters.", 400
        )
    if isinstance(exc, Http404):
        return not_found(request, exc)
    if isinstance(exc, PermissionDenied):
        return permission_denied(request, exc)
    if isinstance(exc, SuspiciousOperation | BadRequest | MultiPartParserError):
        logger.warning("%s %s refused: %r", request.method, request.path, exc)
        return bad_request(request, exc)
    return None
