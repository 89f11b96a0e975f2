"""Reading an API error body in whichever shape its path answers (config/error_shapes.py).

Parley's paths answer `{"error": code, "detail": sentence, "field": name}`; the
OpenAI-compatible ones (`/v1/...`, `/audio/speech...`) answer OpenAI's error object beside
FastAPI's `detail`. `flat_error` checks a body is one of the two, completely, and returns it
flattened to Parley's keys so a test can assert the code and field either way.
"""

from __future__ import annotations

from typing import Any

from config.error_shapes import is_openai_path


def flat_error(body: Any, path: str | None = None) -> dict[str, Any]:
    """`body` as `{"error": code, "detail": message, "field": name, ...}`.

    With `path`, the body must be in the shape that path answers.
    """
    assert isinstance(body, dict), body
    error = body.get("error")
    if path is not None:
        assert isinstance(error, dict) == is_openai_path(path), (path, body)
    if not isinstance(error, dict):
        assert set(body) >= {"error", "detail", "field"}, body
        return body
    assert set(error) == {"message", "type", "param", "code"}, body
    assert error["message"] and error["code"] and error["type"], body
    assert body["field"] == error["param"], body
    detail = body["detail"]
    if isinstance(detail, list):  # FastAPI's 422: [{loc, msg, type}]
        assert detail and all(set(item) == {"loc", "msg", "type"} for item in detail), body
    else:
        assert detail == error["message"], body
    extra = {k: v for k, v in body.items() if k not in ("error", "detail", "field")}
    return {"error": error["code"], "detail": error["message"], "field": error["param"], **extra}
