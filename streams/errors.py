"""One error shape for every endpoint: {"error": code, "detail": sentence, "field": name}."""

from __future__ import annotations

from typing import Any

from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

ECHO_LIMIT = 100  # characters of a client's value an error message repeats


def echoed(value: str) -> str:
    """`value` quoted for an error message (repr), cut to ECHO_LIMIT characters: a 5000-
    character id sent is not 5 KB answered."""
    if len(value) <= ECHO_LIMIT:
        return repr(value)
    return f"{value[:ECHO_LIMIT]!r}... ({len(value)} characters)"


class ApiError(Exception):
    """A refusal the client can act on. Services raise it; views turn it into JSON."""

    status_code = 400

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        status_code: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.field = field
        if status_code is not None:
            self.status_code = status_code
        self.extra = extra

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.code, "detail": self.detail, "field": self.field}
        body.update(self.extra)
        return body


class Conflict(ApiError):
    status_code = 409


class FloorHeld(Conflict):
    def __init__(self, *, holder: str, turn_id: str, expected_release_at: str | None) -> None:
        super().__init__(
            "floor_held",
            f"The floor is held by {holder!r}; try again after it is released.",
            holder=holder,
            turn_id=turn_id,
            expected_release_at=expected_release_at,
        )


def first_validation_error(detail: Any, prefix: str = "") -> tuple[str, str, str]:
    """Flatten DRF's nested error dict into (field, message, code) of the first problem."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = key if key != "non_field_errors" else ""
            field = f"{prefix}.{name}" if prefix and name else (name or prefix)
            return first_validation_error(value, field)
    if isinstance(detail, list) and detail:
        return first_validation_error(detail[0], prefix)
    code = getattr(detail, "code", "invalid") or "invalid"
    return prefix, str(detail), code


# DRF's codes that mean "this field's value is not acceptable": answered `invalid_<field>`.
INVALID_FIELD_CODES = {
    "invalid",
    "required",
    "null",
    "blank",
    "max_value",
    "min_value",
    "max_length",
    # a NUL or a lone surrogate in a text (PostgreSQL could not store it anyway)
    "null_characters_not_allowed",
    "surrogate_characters_not_allowed",
}


def validation_error_body(detail: Any) -> dict[str, Any]:
    field, message, code = first_validation_error(detail)
    if code in INVALID_FIELD_CODES:
        code = f"invalid_{field}" if field else "invalid"
        if field == "":
            code = "invalid_request"
    return {"error": code, "detail": message, "field": field or None}


def exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, ApiError):
        return Response(exc.as_dict(), status=exc.status_code)
    if isinstance(exc, exceptions.ValidationError):
        return Response(validation_error_body(exc.detail), status=status.HTTP_400_BAD_REQUEST)
    if isinstance(exc, exceptions.ParseError):
        return Response(
            {"error": "malformed_json", "detail": str(exc.detail), "field": None},
            status=status.HTTP_400_BAD_REQUEST,
        )
    # Imported late: rest_framework.views loads the auth classes, which import this module.
    from rest_framework.views import exception_handler as drf_exception_handler

    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = "not_found" if isinstance(exc, Http404 | exceptions.NotFound) else None
    if code is None:
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else "error"
        code = codes if isinstance(codes, str) else "error"
    detail = response.data.get("detail", "") if isinstance(response.data, dict) else ""
    response.data = {"error": code, "detail": str(detail), "field": None}
    return response
