"""OpenAPI entries for the two async views, which drf-spectacular cannot introspect."""

from __future__ import annotations

from typing import Any

from config.error_shapes import is_openai_path

ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "machine-readable code"},
        "detail": {"type": "string", "description": "what is wrong, in a sentence"},
        "field": {"type": "string", "nullable": True, "description": "the offending field"},
    },
    "required": ["error", "detail", "field"],
}

# The error body of the OpenAI-compatible paths (config/error_shapes.py).
OPENAI_ERROR = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "description": "OpenAI's error object (what the OpenAI SDKs read)",
            "properties": {
                "message": {"type": "string", "description": "what is wrong, in a sentence"},
                "type": {
                    "type": "string",
                    "enum": [
                        "invalid_request_error",
                        "authentication_error",
                        "permission_error",
                        "rate_limit_error",
                        "server_error",
                    ],
                },
                "param": {"type": "string", "nullable": True, "description": "the field"},
                "code": {"type": "string", "description": "machine-readable code"},
            },
            "required": ["message", "type", "param", "code"],
        },
        "detail": {
            "description": "the seed system's (FastAPI's) detail: the message, or on a 422 "
            "request-validation refusal a list of {loc, msg, type}",
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            # FastAPI's: names, and indexes into a list
                            # (["body", "input", 2, "voice"]).
                            "loc": {
                                "type": "array",
                                "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]},
                            },
                            "msg": {"type": "string"},
                            "type": {"type": "string"},
                        },
                        "required": ["loc", "msg", "type"],
                    },
                },
            ],
        },
        "field": {"type": "string", "nullable": True, "description": "the offending field"},
    },
    "required": ["error", "detail", "field"],
}

CHUNK_FIELDS: dict[str, Any] = {
    "stream_id": {"type": "string", "maxLength": 128, "pattern": "^[A-Za-z0-9._:-]+$"},
    "seq": {"type": "integer", "minimum": 0},
    "data": {"type": "string", "format": "byte", "description": "base64 PCM; empty only if done"},
    "done": {"type": "boolean", "default": False},
    "speech_text": {"type": "string", "description": "published when playback ends"},
    "sample_rate_hz": {"type": "integer", "default": 24000, "minimum": 8000, "maximum": 48000},
    "channels": {"type": "integer", "default": 1, "enum": [1, 2]},
    "bytes_per_sample": {"type": "integer", "default": 2, "minimum": 1, "maximum": 4},
    "playback_speed": {"type": "number", "default": 1.0, "minimum": 0.25, "maximum": 4.0},
    "room": {"type": "string", "default": "default"},
    "speaker": {"type": "string", "default": "agent"},
}

ACK = {
    "type": "object",
    "required": [
        "stream_id",
        "seq",
        "duplicate",
        "received_bytes",
        "received_chunks",
        "done",
        "status",
    ],
    "properties": {
        "stream_id": {"type": "string"},
        "seq": {"type": "integer"},
        "duplicate": {"type": "boolean"},
        "received_bytes": {"type": "integer"},
        "received_chunks": {"type": "integer"},
        "done": {"type": "boolean"},
        "status": {"type": "string"},
        "duration_ms": {"type": "integer", "description": "final chunk only"},
        "playback_ends_at": {"type": "string", "format": "date-time", "nullable": True},
        "missing_seqs": {
            "type": "array",
            "items": {"type": "integer"},
            "maxItems": 100,
            "description": "awaiting_gaps only: the first 100 missing seqs",
        },
        "missing_ranges": {
            "type": "array",
            "items": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "minItems": 2,
                "maxItems": 2,
            },
            "maxItems": 100,
            "description": "awaiting_gaps only: the first 100 runs of missing seqs, "
            "as inclusive [first, last] pairs",
        },
        "missing_count": {
            "type": "integer",
            "description": "awaiting_gaps only: how many seqs are missing in all",
        },
    },
}


_TYPE = "(state|audio_chunk|speech|playback_done|input|turn)"


def _error_responses(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def add_async_endpoints(result: dict, generator: Any, request: Any, public: bool) -> dict:
    from django.conf import settings

    result.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR
    # A stream holds at most PARLEY_MAX_CHUNKS_PER_STREAM chunks (docs/api.md).
    seq = {**CHUNK_FIELDS["seq"], "maximum": settings.PARLEY_MAX_CHUNKS_PER_STREAM - 1}
    chunk_fields = {**CHUNK_FIELDS, "seq": seq}
    query_params = [
        {"name": name, "in": "query", "schema": schema, "required": name in ("stream_id", "seq")}
        for name, schema in chunk_fields.items()
        if name != "data"
    ]
    result["paths"]["/audio"] = {
        "post": {
            "operationId": "audio_chunk",
            "security": [{"apiKey": []}, {}],
            "summary": "Send one chunk of a stream (the seed's POST /audio)",
            "tags": ["audio"],
            "parameters": [
                {**p, "description": "raw-body mode only (application/octet-stream)"}
                for p in query_params
            ],
            "requestBody": {
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": chunk_fields,
                            "required": ["stream_id", "seq"],
                        }
                    },
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                }
            },
            "responses": {
                "200": {
                    "description": "acknowledged (durable)",
                    "content": {"application/json": {"schema": ACK}},
                },
                **_error_responses(400, 401, 403, 409, 413, 415),
            },
        }
    }
    result["paths"]["/api/rooms/{room}/events"] = {
        "get": {
            "operationId": "room_events",
            "summary": "The room's events after an id, long-polling up to `wait` seconds",
            "tags": ["api"],
            "parameters": [
                {"name": "room", "in": "path", "required": True, "schema": {"type": "string"}},
                {
                    "name": "after",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
                },
                {
                    "name": "types",
                    "in": "query",
                    "schema": {"type": "string", "pattern": f"^({_TYPE}(,{_TYPE})*)?$"},
                    "description": "comma-separated: state, audio_chunk, speech, "
                    "playback_done, input, turn",
                },
                {
                    "name": "wait",
                    "in": "query",
                    "schema": {"type": "number", "minimum": 0, "maximum": 30},
                },
            ],
            "responses": {
                "200": {
                    "description": "events in id order and the id to pass as `after` next",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "events": {"type": "array", "items": {"type": "object"}},
                                    "last_id": {"type": "integer"},
                                },
                            }
                        }
                    },
                },
                **_error_responses(400),
            },
        }
    }
    # Chat (seed 004) and POST /api/rooms/{room}/say: chat/openapi.py.
    from chat.openapi import chat_paths

    result["paths"].update(chat_paths())
    return result


# --- every operation: who may call it, and the errors any of them can answer ----------------

_READS = frozenset({"get", "head", "options"})
# Operations that take no API key at all (the recording session's own key authenticates).
_NO_API_KEY = frozenset({("post", "/streaming/force_stop")})
# Room and speaker names, wherever a path or query names one, are what the services accept.
_NAME_PATTERNS: dict[str, str] = {}
_ERROR_DESCRIPTIONS = {
    400: "invalid input: `field` names the offending field or parameter",
    401: "an API key is required here (PARLEY_REQUIRE_AUTH) or the one given is unknown",
    404: "no such resource (or no such path)",
    413: "the request body is too large",
    415: "the body's Content-Type is not one this operation reads",
    503: "the database or another service is unreachable for now; retry after Retry-After",
}


def _name_patterns() -> dict[str, str]:
    from streams.services import ROOM_NAME_RE, SPEAKER_RE

    return {"room": ROOM_NAME_RE.pattern, "speaker": SPEAKER_RE.pattern}


def _describe_parameter(path: str, parameter: dict[str, Any]) -> None:
    """Patterns of the names the services validate; elsewhere, no NUL (the API layer refuses
    it in every path and query string)."""
    schema = parameter.setdefault("schema", {"type": "string"})
    where, name = parameter.get("in"), parameter.get("name")
    if where not in ("path", "query") or schema.get("type") != "string" or "pattern" in schema:
        return
    pattern = _NAME_PATTERNS.get(name)
    validated = where == "path" or (
        (name == "room" and path.startswith("/api/streams"))
        or (name == "speaker" and path == "/api/rooms/{room}/floor")
    )
    if pattern and validated:
        # A query filter left empty filters nothing.
        schema["pattern"] = f"^({pattern.strip('^$')})?$" if where == "query" else pattern
    elif "enum" not in schema and "format" not in schema:
        schema["pattern"] = "^[^\\x00]*$"


def _error_response(code: int) -> dict[str, Any]:
    return {
        "description": _ERROR_DESCRIPTIONS[code],
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def document_access_and_errors(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """Make every operation say who may call it and which error answers it can give.

    Security: reads take an optional key (a key given must be valid); writes need one when
    PARLEY_REQUIRE_AUTH is on and take an optional one otherwise, so the schema served matches
    the server's setting. Errors: every operation can answer 400, 401, 404 (a path that
    matches nothing) and 503 (database outage) in the error shape; one with a body also 413
    and 415. An operation's own description of a code is kept.
    """
    from django.conf import settings

    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault("Error", ERROR)
    schemas["OpenAIError"] = OPENAI_ERROR
    optional, required = [{"apiKey": []}, {}], [{"apiKey": []}]
    _NAME_PATTERNS.update(_name_patterns())
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            if (method, path) in _NO_API_KEY:
                operation["security"] = [{}]
            elif method in _READS or not settings.PARLEY_REQUIRE_AUTH:
                operation["security"] = optional
            else:
                operation["security"] = required
            for parameter in operation.get("parameters", []):
                _describe_parameter(path, parameter)
            codes = [400, 401, 404, 503] + ([413, 415] if "requestBody" in operation else [])
            responses = operation["responses"]
            for code in codes:
                responses.setdefault(str(code), _error_response(code))
            if is_openai_path(path):
                _openai_errors(responses)
    return result


def _openai_errors(responses: dict[str, Any]) -> None:
    """On an OpenAI-compatible path every JSON error is OpenAI's shape (config/handlers.py)."""
    for code, response in responses.items():
        if not code.isdigit() or int(code) < 400:
            continue
        media = response.get("content", {}).get("application/json")
        if media is not None and media.get("schema", {}).get("$ref", "").endswith("/Error"):
            response["content"] = {
                "application/json": {"schema": {"$ref": "#/components/schemas/OpenAIError"}}
            }
