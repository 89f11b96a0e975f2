"""The error shape of the OpenAI-compatible paths (issue 10 §1). Pure: no Django import.

Parley's own API answers `{"error": code, "detail": sentence, "field": name}` (docs/api.md).
OpenAI's clients read `error` as an object: the official JS SDK builds its message from
`error.message` and reads `param`, `code` and `type` from the same object, so on Parley's
error shape it shows only `400 "unknown_voice"`. The seed's system (Chatterbox TTS API, a
FastAPI app) answers `{"detail": ...}`: a sentence, or for a request that fails validation
(422) a list of `{loc, msg, type}`. Under `/v1/` and on the seed's bare speech paths every
error body carries both, and `field` as before::

    {"error": {"message": "...", "type": "invalid_request_error", "param": "voice",
               "code": "voice_not_found"},
     "detail": "..." | [{"loc": ["body", "voice"], "msg": "...", "type": "value_error"}],
     "field": "voice"}

Sources: OpenAI's API reference, "Error codes" and the `error` object of its SDKs
(openai-node `APIError.makeMessage`, openai-python `APIStatusError`); FastAPI's
`RequestValidationError` handler.
"""

from __future__ import annotations

import re
from typing import Any

# /v1/... and the seed's bare aliases of the speech paths (/audio/speech, /audio/speech/...).
# Not /audio itself (seed 000's chunk upload), /audio/stream (seed 004) or /audio/<id>.wav.
_OPENAI_PATH = re.compile(r"^/(?:v1/|audio/speech(?:/|$))")


def is_openai_path(path: str) -> bool:
    """Whether errors on `path` answer in OpenAI's shape (see the module docstring)."""
    return _OPENAI_PATH.match(path) is not None


def openai_error_type(status: int) -> str:
    """OpenAI's `error.type` for an HTTP status."""
    if status == 401:
        return "authentication_error"
    if status == 403:
        return "permission_error"
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


def openai_error(
    code: str,
    message: str,
    status: int,
    *,
    param: str | None = None,
    detail: str | list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The body of an error on an OpenAI-compatible path.

    `detail` defaults to `message` (FastAPI's `HTTPException` shape); a list is FastAPI's
    validation detail. `extra` keys are kept beside them (e.g. `holder` of a floor refusal).
    """
    body: dict[str, Any] = {
        "error": {
            "message": message,
            "type": openai_error_type(status),
            "param": param,
            "code": code,
        },
        "detail": message if detail is None else detail,
        "field": param,
    }
    body.update(extra)
    return body


def validation_detail(code: str, message: str, field: str | None) -> list[dict[str, Any]]:
    """FastAPI's 422 `detail` for one refused field: `[{"loc", "msg", "type"}]`.

    `type` follows pydantic's names: `missing`, `extra_forbidden`, `json_invalid`, and
    `value_error` for a value of the wrong type or out of range.
    """
    if code.startswith("missing_"):
        kind = "missing"
    elif code == "unknown_field":
        kind = "extra_forbidden"
    elif code.startswith("malformed_"):
        kind = "json_invalid" if code == "malformed_json" else "value_error"
    else:
        kind = "value_error"
    loc: list[str | int] = ["body", *_field_path(field)] if field else ["body"]
    return [{"loc": loc, "msg": message, "type": kind}]


def _field_path(field: str) -> list[str | int]:
    """A field as FastAPI's `loc`: a multi-voice segment's "input[2].voice" is
    ["input", 2, "voice"]; any other name is one part, dots and all."""
    match = _ITEM_FIELD.match(field)
    if match is None:
        return [field]
    name, index, rest = match.groups()
    return [name, int(index), *([rest] if rest is not None else [])]


_ITEM_FIELD = re.compile(r"^(\w+)\[(\d+)\](?:\.(.+))?$", re.DOTALL)


def reshape(body: Any, status: int) -> dict[str, Any] | None:
    """Parley's error body as OpenAI's, or None when `body` is not Parley's shape (already
    OpenAI's, or not an error object at all)."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), str):
        return None
    extra = {k: v for k, v in body.items() if k not in ("error", "detail", "field")}
    detail = body.get("detail")
    message = detail if isinstance(detail, str) and detail else body["error"]
    return openai_error(
        body["error"],
        message,
        status,
        param=body.get("field"),
        detail=detail if isinstance(detail, list) else None,
        **extra,
    )
