"""Small helpers every plain (non-DRF) view shares: JSON bodies and JSON errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, JsonResponse

from streams.errors import ApiError


def json_object(body: bytes, loads: Callable[[bytes], Any] = json.loads) -> dict[str, Any]:
    """Parse a request body that must be one JSON object, or raise `malformed_json`.

    `loads` may be streams.params.json_loads, for a view whose fields tell a huge integer
    apart (`invalid_<field>` rather than a malformed body).
    """
    try:
        values = loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError("malformed_json", f"The body is not valid JSON: {exc}.") from exc
    if not isinstance(values, dict):
        raise ApiError("malformed_json", "The body must be a JSON object.")
    return values


def json_body(request: HttpRequest) -> dict[str, Any]:
    """The request's JSON object; a body of another media type is refused with 415."""
    content_type = request.content_type or ""
    if content_type not in ("application/json", ""):
        raise ApiError(
            "unsupported_media_type",
            f"Send a JSON object (Content-Type: application/json), not {content_type}.",
            field="Content-Type",
            status_code=415,
        )
    return json_object(request.body)


def error_response(exc: ApiError) -> JsonResponse:
    return JsonResponse(exc.as_dict(), status=exc.status_code)


def method_not_allowed(allowed: str) -> JsonResponse:
    response = JsonResponse(
        {"error": "method_not_allowed", "detail": f"Use {allowed}.", "field": None}, status=405
    )
    response["Allow"] = allowed
    return response
