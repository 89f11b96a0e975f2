"""OpenAPI entries of the seed system's operator endpoints (speech.operator_views).

Each operator path is documented at its /v1/ path, its bare path and the seed's extra names
(speech.urls.OPERATOR_ROUTES). Flags are documented as the strings the views accept, so
a value the view refuses is one the schema refuses too.
"""

from __future__ import annotations

import copy
from typing import Any

from speech.voices import NAME_PATTERN

TAG = "speech-operator"
TRUE_WORDS = ["true", "1", "yes", "on"]
FLAG_WORDS = [*TRUE_WORDS, "false", "0", "no", "off"]
NULLABLE_NUMBER = {"type": "number", "nullable": True}


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


def _closed(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {**_object(properties, required), "additionalProperties": False}


def _flag(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "string", "enum": FLAG_WORDS},
        "description": description,
    }


def _int(name: str, low: int, high: int, default: int) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": low, "maximum": high, "default": default},
    }


CONFIRM = {
    "name": "confirm",
    "in": "query",
    "required": True,
    "schema": {"type": "string", "enum": TRUE_WORDS},
    "description": "required: without it the answer is 400 confirmation_required",
}
NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
ALIAS = {"name": "alias", "in": "path", "required": True, "schema": {"type": "string"}}
VOICE_NAME = {"type": "string", "pattern": NAME_PATTERN.pattern}

PROGRESS = _object(
    {
        "current_chunk": {"type": "integer"},
        "total_chunks": {"type": "integer"},
        "current_step": {"type": "string"},
        "progress_percentage": {"type": "number"},
        "estimated_completion": NULLABLE_NUMBER,
    }
)
REQUEST = _object(
    {
        "request_id": {"type": "string"},
        "status": {"type": "string"},
        "start_time": NULLABLE_NUMBER,
        "end_time": NULLABLE_NUMBER,
        "text_length": {"type": "integer"},
        "text_preview": {"type": "string"},
        "voice_source": {"type": "string"},
        "parameters": {"type": "object"},
        "progress": PROGRESS,
        "error_message": {"type": "string", "nullable": True},
        "duration_seconds": {"type": "number"},
        "is_active": {"type": "boolean"},
        "job_id": {"type": "string", "format": "uuid"},
        "kind": {"type": "string"},
        "engine": {"type": "string"},
        "cache": {
            "type": "string",
            "enum": ["hit", "miss", None],
            "nullable": True,
            "description": "served from the synthesis cache (hit) or looked up (miss)",
        },
    },
    ["request_id", "status", "progress", "duration_seconds"],
)
STATISTICS = _object(
    {
        "total_requests": {"type": "integer"},
        "completed_requests": {"type": "integer"},
        "error_requests": {"type": "integer"},
        "success_rate": {"type": "number", "description": "percent of finished requests"},
        "average_duration_seconds": {"type": "number"},
        "average_text_length": {"type": "number"},
        "is_processing": {"type": "boolean"},
        "cancelled_requests": {"type": "integer"},
        "active_requests": {"type": "integer"},
        "total_audio_seconds": {"type": "number"},
        "failures": {"type": "object", "additionalProperties": {"type": "integer"}},
        "by_kind": {"type": "object", "additionalProperties": {"type": "integer"}},
        "by_engine": {"type": "object", "additionalProperties": {"type": "integer"}},
        "cache": _object(
            {
                "enabled": {"type": "boolean"},
                "hits": {"type": "integer", "description": "served from the cache"},
                "misses": {"type": "integer", "description": "looked up, synthesized"},
                "hit_rate": {"type": "number", "description": "percent of hits and misses"},
            },
            ["enabled", "hits", "misses", "hit_rate"],
        ),
        "since": {"type": "string", "nullable": True, "description": "the last clear"},
    },
    ["total_requests", "completed_requests", "error_requests", "success_rate"],
)
STATUS = _object(
    {
        **REQUEST["properties"],
        "is_processing": {"type": "boolean"},
        "message": {"type": "string"},
        "total_requests": {"type": "integer"},
        "active_jobs": {"type": "integer"},
        "active_job_ids": {"type": "array", "items": {"type": "string"}},
        "memory_info": {"type": "object"},
        "request_history": {"type": "array", "items": REQUEST},
        "statistics": STATISTICS,
    },
    ["status", "is_processing", "total_requests", "active_jobs"],
)
MEMORY_INFO = _object(
    {
        "rss_mb": NULLABLE_NUMBER,
        "cpu_memory_mb": NULLABLE_NUMBER,
        "cpu_memory_percent": NULLABLE_NUMBER,
        "gc_objects": {"type": "integer"},
    }
)
MEMORY = _object(
    {
        "memory_info": MEMORY_INFO,
        "request_counter": {"type": "integer"},
        "cleanup_performed": {"type": "boolean"},
        "collected_objects": {"type": "integer"},
        "memory_info_after_cleanup": MEMORY_INFO,
        "freed": {"type": "object"},
        "alerts": {"type": "object"},
        "active_jobs": {"type": "integer"},
        "pid": {"type": "integer"},
    },
    ["memory_info", "request_counter", "cleanup_performed"],
)
ALIASES = _object(
    {
        "voice_name": {"type": "string"},
        "aliases": {"type": "array", "items": {"type": "string"}},
        "count": {"type": "integer"},
    },
    ["voice_name", "aliases"],
)
ALIAS_CHANGE = _object(
    {
        "message": {"type": "string"},
        "voice_name": {"type": "string"},
        "alias": {"type": "string"},
        "aliases": {"type": "array", "items": {"type": "string"}},
    },
    ["voice_name", "alias", "aliases"],
)
DEFAULT_VOICE = _object(
    {
        "default_voice": {"type": "string", "nullable": True},
        "source": {"type": "string", "enum": ["voice_library", "builtin", "engine_default"]},
        "voice_info": {"type": "object"},
        "engine": {"type": "string"},
        "engine_voice": {"type": "string", "nullable": True},
        "message": {"type": "string"},
    },
    ["default_voice"],
)


def _ok(schema: dict[str, Any], status: str = "200") -> dict[str, Any]:
    return {status: {"description": "OK", "content": {"application/json": {"schema": schema}}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for code in codes
    }


def _op(
    op_id: str,
    summary: str,
    schema: dict[str, Any],
    *codes: int,
    status: str = "200",
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [TAG],
        "responses": {**_ok(schema, status), **_errors(*codes)},
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        # The seed reads Form fields; JSON works too.
        operation["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": body}
                for media in (
                    "application/json",
                    "multipart/form-data",
                    "application/x-www-form-urlencoded",
                )
            },
        }
    return operation


def _operator_items(engines: list[str]) -> dict[str, dict[str, Any]]:
    """Path items by bare route (speech.urls.OPERATOR_ROUTES); `engines`: configured names."""
    free = {"type": "object"}
    return {
        "status": {
            "get": _op(
                "status",
                "Is anything being synthesized (any worker): the current job, or idle",
                STATUS,
                400,
                parameters=[
                    _flag("include_memory", "add this process's memory_info"),
                    _flag("include_history", "add request_history"),
                    _flag("include_stats", "add statistics"),
                    _int("history_limit", 1, 20, 5),
                ],
            )
        },
        "status/history": {
            "get": _op(
                "status_history",
                "Finished syntheses since the last clear, newest first (SpeechJob records)",
                _object(
                    {
                        "request_history": {"type": "array", "items": REQUEST},
                        "total_records": {"type": "integer"},
                        "limit": {"type": "integer"},
                    },
                    ["request_history", "total_records", "limit"],
                ),
                400,
                parameters=[_int("limit", 1, 50, 10)],
            )
        },
        "status/statistics": {
            "get": _op(
                "status_statistics",
                "Counts, durations and failures since the last clear (every worker)",
                STATISTICS,
                400,
                parameters=[_flag("include_memory", "add current_memory (this process)")],
            )
        },
        "status/history/clear": {
            "post": _op(
                "status_history_clear",
                "Start history and statistics again from now (records are kept)",
                _object(
                    {
                        "success": {"type": "boolean"},
                        "cleared_records": {"type": "integer"},
                        "cleared_at": {"type": "string", "format": "date-time"},
                    },
                    ["success", "cleared_records", "cleared_at"],
                ),
                400,
                parameters=[CONFIRM],
            )
        },
        "memory": {
            "get": _op(
                "memory",
                "This process's memory and the request counter; ?cleanup=true runs a "
                "collection pass and reports what it freed",
                MEMORY,
                400,
                parameters=[
                    _flag("cleanup", "run the garbage collector first"),
                    _flag("include_alerts", "add alerts (default true)"),
                ],
            ),
            "post": _op(
                "memory_cleanup",
                "Run the garbage collector, then report memory as GET ?cleanup=true does",
                MEMORY,
                400,
                parameters=[_flag("include_alerts", "add alerts (default true)")],
            ),
        },
        "memory/reset": {
            "post": _op(
                "memory_reset",
                "Restart the request counter (every worker) and run a full collection",
                _object(
                    {
                        "status": {"type": "string"},
                        "previous_request_counter": {"type": "integer"},
                        "collected_objects": {"type": "integer"},
                        "memory_info": MEMORY_INFO,
                    },
                    ["status", "previous_request_counter", "collected_objects"],
                ),
                400,
                parameters=[CONFIRM],
            )
        },
        "memory/config": {
            "get": _op(
                "memory_config",
                "Memory settings, alert thresholds and devices",
                _object({"config": free, "alert_thresholds": free, "device_info": free}),
            )
        },
        "memory/recommendations": {
            "get": _op(
                "memory_recommendations",
                "Advice from this process's memory and the request counter",
                _object(
                    {
                        "memory_info": MEMORY_INFO,
                        "request_counter": {"type": "integer"},
                        "recommendations": {"type": "array", "items": free},
                        "recommendation_count": {"type": "integer"},
                        "has_critical_issues": {"type": "boolean"},
                    },
                    ["recommendations", "recommendation_count", "has_critical_issues"],
                ),
            )
        },
        "info": {
            "get": _op(
                "info",
                "Version, status, statistics, memory and the last requests",
                _object(
                    {
                        "api_name": {"type": "string"},
                        "version": {"type": "string"},
                        "status": {"type": "string"},
                        "statistics": STATISTICS,
                        "recent_requests": {"type": "array", "items": REQUEST},
                    },
                    ["api_name", "version", "status"],
                ),
            )
        },
        "ping": {
            "get": _op(
                "ping",
                "Connectivity check",
                _object(
                    {"status": {"type": "string"}, "message": {"type": "string"}},
                    ["status", "message"],
                ),
            )
        },
        "config": {
            "get": _op(
                "config",
                "The effective settings, secrets masked (keys, passwords, URL credentials)",
                _object(
                    {
                        "api_info": free,
                        "server": free,
                        "model": free,
                        "defaults": free,
                        "memory_management": free,
                        "settings": free,
                    },
                    ["settings"],
                ),
            )
        },
        "endpoints": {
            "get": _op(
                "endpoints",
                "Every route and its aliases",
                _object(
                    {
                        "total_endpoints": {"type": "integer"},
                        "total_aliases": {"type": "integer"},
                        "mappings": {"type": "object", "additionalProperties": free},
                    },
                    ["total_endpoints", "total_aliases", "mappings"],
                ),
            )
        },
        "languages": {
            "get": _op(
                "languages",
                "Languages of an engine's voices (the default engine's by default)",
                _object(
                    {
                        "languages": {
                            "type": "array",
                            "items": _object(
                                {"code": {"type": "string"}, "name": {"type": "string"}},
                                ["code", "name"],
                            ),
                        },
                        "count": {"type": "integer"},
                        "model_type": {"type": "string"},
                        "engine": {"type": "string"},
                    },
                    ["languages", "count"],
                ),
                400,
                503,
                parameters=[
                    {
                        "name": "engine",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": ["", *engines]},
                        "description": "an engine name (GET /v1/models); empty or missing: "
                        "the default engine",
                    }
                ],
            )
        },
    }


def _renamed(item: dict[str, Any], prefix: str, note: str) -> dict[str, Any]:
    # A deep copy: schema post-processing edits each path's responses in place (OpenAI's
    # error shape on /v1/ paths only), so no two paths may share one.
    return {
        method: {
            **copy.deepcopy(operation),
            "operationId": prefix + operation["operationId"],
            "summary": operation["summary"] + note,
        }
        for method, operation in item.items()
    }


def operator_paths() -> dict[str, Any]:
    """The operator paths: /v1/<route>, its bare alias, and the seed's extra names."""
    from speech.services import get_registry
    from speech.urls import OPERATOR_ROUTES

    items = _operator_items(get_registry().names())
    paths: dict[str, Any] = {}
    for route, _view, _name, aliases in OPERATOR_ROUTES:
        item = items[route]
        paths[f"/v1/{route}"] = _renamed(item, "v1_", "")
        paths[f"/{route}"] = _renamed(item, "", f" (alias of /v1/{route})")
        for alias in aliases:
            prefix = alias.replace("/", "_") + "_alias_"
            paths[f"/{alias}"] = _renamed(item, prefix, f" (alias of /v1/{route})")
    paths["/v1/health"] = {
        "get": {
            "operationId": "v1_health",
            "summary": "Engines and database (alias of /health)",
            "tags": [TAG],
            "responses": {**_ok({"type": "object"}), **_errors(503)},
        }
    }
    paths.update(voice_library_paths())
    return paths


def voice_library_paths() -> dict[str, Any]:
    """Aliases, all names, the default voice, and rename by PUT."""
    change = _errors(400, 404, 409, 415)
    return {
        "/v1/voices/{name}/aliases": {
            "get": _op(
                "voice_aliases",
                "A stored voice's aliases (name may itself be an alias)",
                ALIASES,
                404,
                parameters=[NAME],
            ),
            "post": _op(
                "voice_alias_add",
                "Add another name for a stored voice; it resolves in synthesis like the name",
                ALIAS_CHANGE,
                400,
                404,
                409,
                415,
                status="201",
                parameters=[NAME],
                body=_closed({"alias": VOICE_NAME}, ["alias"]),
            ),
        },
        "/v1/voices/{name}/aliases/{alias}": {
            "delete": _op(
                "voice_alias_remove",
                "Remove an alias of a stored voice",
                ALIAS_CHANGE,
                404,
                parameters=[NAME, ALIAS],
            )
        },
        "/v1/voices/all-names": {
            "get": _op(
                "voice_all_names",
                "Names and aliases of the stored voices",
                _object(
                    {
                        "voice_names": {"type": "array", "items": {"type": "string"}},
                        "count": {"type": "integer"},
                        "aliases": {"type": "object", "additionalProperties": {"type": "string"}},
                    },
                    ["voice_names", "count"],
                ),
            )
        },
        "/v1/voices/default": {
            "get": _op(
                "voice_default",
                "The voice of a request that names none",
                DEFAULT_VOICE,
            ),
            "post": _op(
                "voice_default_set",
                "Set the default voice: any name a request could give (stored, alias, "
                "OpenAI's, an engine's)",
                DEFAULT_VOICE,
                400,
                404,
                415,
                503,
                # What default_voice_set refuses: empty or only whitespace.
                body=_closed(
                    {
                        "voice_name": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": 128,
                            "pattern": "\\S",
                        }
                    },
                    ["voice_name"],
                ),
            ),
            "delete": _op(
                "voice_default_clear",
                "Back to the engine's own default voice",
                DEFAULT_VOICE,
            ),
        },
        "/v1/voices/{name}": {
            "put": _op(
                "voice_rename",
                "Rename a stored voice (the seed's): its aliases and the default follow it",
                _object(
                    {
                        "message": {"type": "string"},
                        "old_name": {"type": "string"},
                        "new_name": {"type": "string"},
                        "voice": {"type": "object"},
                    },
                    ["old_name", "new_name", "voice"],
                ),
                *(int(code) for code in change),
                503,
                parameters=[NAME],
                body=_closed({"new_name": VOICE_NAME}, ["new_name"]),
            )
        },
    }
