"""OpenAPI entries for the long text job views (plain async views drf-spectacular cannot see).

Only the /v1/ paths are documented, as for the voice library: the bare aliases
(/audio/speech/long...) are the same views (longform/urls.py). The request schemas come from
the field tables the views validate with (longform.services), so they cannot drift.
"""

from __future__ import annotations

from typing import Any

from longform.models import LongStatus
from speech.openapi import AUDIO_TYPES, JOB_PARAM, _errors, _json, _object, _with_models
from streams.pagination import MAX_OFFSET

TAG = "long text"
PREFIX = "/v1/audio/speech/long"

STATUS = {"type": "string", "enum": list(LongStatus.values)}
NULLABLE_STRING = {"type": "string", "nullable": True}
NULLABLE_NUMBER = {"type": "number", "nullable": True}
NULLABLE_INTEGER = {"type": "integer", "nullable": True}
NULLABLE_TIME = {"type": "string", "format": "date-time", "nullable": True}

PROGRESS = _object(
    {
        "job_id": {"type": "string", "format": "uuid"},
        "status": STATUS,
        "overall_progress": {"type": "number", "description": "percent, 0 to 100"},
        "total_chunks": {"type": "integer"},
        "completed_chunks": {"type": "integer"},
        "current_chunk": {**NULLABLE_INTEGER, "description": "while processing"},
        "characters_done": {"type": "integer"},
        "text_length": {"type": "integer"},
        "audio_seconds": {"type": "number"},
        "estimated_remaining_seconds": {
            **NULLABLE_NUMBER,
            "description": "from the synthesis time per character so far; while active",
        },
        "error": NULLABLE_STRING,
    },
    [
        "job_id",
        "status",
        "overall_progress",
        "total_chunks",
        "completed_chunks",
        "characters_done",
        "text_length",
    ],
)
METADATA = _object(
    {
        "text_length": {"type": "integer"},
        "total_chunks": {"type": "integer"},
        "completed_chunks": {"type": "integer"},
        "chunk_size": {"type": "integer"},
        "model": NULLABLE_STRING,
        "voice": NULLABLE_STRING,
        "speed": {"type": "number"},
        "parameters": {"type": "object", "description": "the synthesis knobs given"},
        "output_format": {"type": "string"},
        "sample_rate": NULLABLE_INTEGER,
        "output_size_bytes": NULLABLE_INTEGER,
        "output_duration_seconds": NULLABLE_NUMBER,
        "first_chunk_seconds": NULLABLE_NUMBER,
        "total_processing_time_ms": {"type": "integer"},
        "retry_count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "is_archived": {"type": "boolean"},
        "error": NULLABLE_STRING,
        "error_detail": NULLABLE_STRING,
        "processing_started_at": NULLABLE_TIME,
        "processing_paused_at": NULLABLE_TIME,
        "processing_completed_at": NULLABLE_TIME,
    }
)
JOB = _object(
    {
        "job_id": {"type": "string", "format": "uuid"},
        "status": STATUS,
        "display_name": NULLABLE_STRING,
        "text_preview": {"type": "string", "description": "the first 100 characters"},
        "progress": PROGRESS,
        "metadata": METADATA,
        "created_at": NULLABLE_TIME,
        "updated_at": NULLABLE_TIME,
        "status_url": {"type": "string"},
        "sse_url": {"type": "string"},
        "download_url": {**NULLABLE_STRING, "description": "once completed"},
        "can_pause": {"type": "boolean"},
        "can_resume": {"type": "boolean"},
        "can_cancel": {"type": "boolean"},
        "can_retry": {"type": "boolean"},
    },
    ["job_id", "status", "progress", "metadata", "status_url", "sse_url"],
)
CREATED = _object(
    {
        "job_id": {"type": "string", "format": "uuid"},
        "status": STATUS,
        "message": {"type": "string"},
        "total_chunks": {"type": "integer"},
        "status_url": {"type": "string"},
        "sse_url": {"type": "string"},
    },
    ["job_id", "status", "total_chunks", "status_url", "sse_url"],
)
ITEM = _object(
    {
        "job_id": {"type": "string", "format": "uuid"},
        "status": STATUS,
        "display_name": NULLABLE_STRING,
        "text_preview": {"type": "string"},
        "created_at": NULLABLE_TIME,
        "text_length": {"type": "integer"},
        "progress_percentage": {"type": "number"},
        "completed_at": NULLABLE_TIME,
        "download_url": NULLABLE_STRING,
        "can_resume": {"type": "boolean"},
        "voice": NULLABLE_STRING,
        "total_duration_seconds": NULLABLE_NUMBER,
        "audio_file_size": NULLABLE_INTEGER,
        "retry_count": {"type": "integer"},
        "is_archived": {"type": "boolean"},
        "tags": {"type": "array", "items": {"type": "string"}},
    },
    ["job_id", "status"],
)
PAGE = _object(
    {
        "jobs": {"type": "array", "items": ITEM},
        "total_jobs": {"type": "integer"},
        "active_jobs": {"type": "integer"},
        "completed_jobs": {"type": "integer"},
        "limit": {"type": "integer"},
        "offset": {"type": "integer"},
    },
    ["jobs", "total_jobs", "active_jobs", "completed_jobs", "limit", "offset"],
)
STATS = _object(
    {
        "total_jobs": {"type": "integer"},
        "completed_jobs": {"type": "integer"},
        "failed_jobs": {"type": "integer"},
        "cancelled_jobs": {"type": "integer"},
        "active_jobs": {"type": "integer"},
        "paused_jobs": {"type": "integer"},
        "total_audio_duration_seconds": {"type": "number"},
        "total_characters": {"type": "integer"},
        "total_storage_bytes": {"type": "integer"},
        "average_processing_time_seconds": {"type": "number"},
        "success_rate_percentage": {"type": "number"},
        "most_used_voice": NULLABLE_STRING,
        "jobs_by_month": {"type": "object", "additionalProperties": {"type": "integer"}},
    },
    ["total_jobs", "completed_jobs", "failed_jobs", "cancelled_jobs", "active_jobs"],
)
ACTION = _object(
    {
        "success": {"type": "boolean"},
        "message": {"type": "string"},
        "status": STATUS,
        "job": JOB,
    },
    ["success", "message", "status", "job"],
)
DELETED = _object(
    {"message": {"type": "string"}, "job_id": {"type": "string", "format": "uuid"}},
    ["message", "job_id"],
)


def _or_empty(schema: dict[str, Any]) -> dict[str, Any]:
    """A page parameter: the number, or empty for the default (longform.views._page)."""
    return {"oneOf": [schema, {"type": "string", "enum": [""]}]}


# What longform.views._flag reads, case-insensitively.
FLAG_PATTERN = "^([01]|[Tt][Rr][Uu][Ee]|[Yy][Ee][Ss]|[Ff][Aa][Ll][Ss][Ee]|[Nn][Oo])$"
PAGE_PARAMETERS = [
    {
        "name": "status",
        "in": "query",
        "schema": STATUS,
        "description": "only jobs in this state",
    },
    {
        "name": "limit",
        "in": "query",
        "schema": _or_empty({"type": "integer", "minimum": 1, "maximum": 10**9, "default": 50}),
        "description": "page size; above 500 it is clamped to 500",
    },
    {
        "name": "offset",
        "in": "query",
        "schema": _or_empty({"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0}),
    },
]
SSE_DESCRIPTION = (
    "Server-Sent Events: `event: progress` (data: {job_id, event_type, data: the progress "
    "object, timestamp}) on each change, then one of `completed`, `failed`, `cancelled` "
    "(data: the whole job) and the end of the stream; `error` if the job is deleted "
    "meanwhile. A `: keep-alive` comment every 15 s without a change."
)
SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event: its name and its JSON data.",
    "properties": {
        "event": {
            "type": "string",
            "enum": ["progress", "completed", "failed", "cancelled", "error"],
        },
        "data": {"type": "string", "description": "a JSON object (job_id, event_type, data)"},
    },
    "required": ["event", "data"],
}
# NUL refused, some non-whitespace; no surrogate range here (schemathesis drops patterns
# with one, and its generator makes no lone surrogates anyway).
NO_NUL_PATTERN = "^[^\\x00]*$"
TAG_PATTERN = "^[^\\x00]*[^\\s\\x00][^\\x00]*$"
WRONG_STATE = "the job is not in a state that allows this (`error` invalid_job_state)"


def _state_error(description: str = WRONG_STATE) -> dict[str, Any]:
    return {"409": {**_errors(409)["409"], "description": description}}


def _operation(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "operationId": op_id,
        "summary": summary,
        "tags": [TAG],
        "responses": responses,
        **extra,
    }


def long_request_schema(models: list[str]) -> dict[str, Any]:
    """The POST body: longform.services.long_fields, `model` limited to the known models."""
    from longform.services import long_fields

    fields = long_fields()
    schema = _object(
        {spec.name: spec.openapi() for spec in fields},
        [spec.name for spec in fields if spec.required],
        closed=True,
    )
    return _with_models(schema, models)


def update_schema() -> dict[str, Any]:
    """The PATCH body (longform.services.job_update): null leaves a field as it is."""
    from longform.services import DISPLAY_NAME

    return _object(
        {
            "display_name": {**DISPLAY_NAME.openapi(), "pattern": NO_NUL_PATTERN},
            "is_archived": {"type": "boolean", "nullable": True},
            "tags": {
                "type": "array",
                "nullable": True,
                "maxItems": 20,
                "items": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 50,
                    "pattern": TAG_PATTERN,
                },
                "description": "replaces the tags; each is stored stripped",
            },
        },
        closed=True,
    )


RETRY_BODY = _object(
    {
        "preserve_chunks": {
            "type": "boolean",
            "default": True,
            "description": "keep the pieces already synthesized (false: start over)",
        }
    },
    closed=True,
)


def longform_paths() -> dict[str, Any]:
    from speech.services import get_registry

    registry = get_registry()
    models = sorted({*registry.models(), *registry.names()})
    job = {"parameters": [JOB_PARAM]}
    paths: dict[str, Any] = {}
    paths[PREFIX] = {
        "get": _operation(
            "long_job_list",
            "Long text jobs, newest first",
            {"200": _json(PAGE), **_errors(400)},
            parameters=PAGE_PARAMETERS,
        ),
        "post": _operation(
            "long_job_create",
            "Start a long text job (up to PARLEY_TTS_LONG_MAX_CHARS characters): synthesized "
            "in the background piece by piece, resumable across restarts",
            {
                "202": {
                    **_json(CREATED, "accepted; the job waits for or runs on a worker"),
                    "headers": {
                        "Location": {
                            "schema": {"type": "string"},
                            "description": "the job's status URL",
                        }
                    },
                },
                **_errors(400, 404, 413, 415, 422, 503),
            },
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": long_request_schema(models)}},
            },
        ),
    }
    paths[f"{PREFIX}-history"] = {
        "get": _operation(
            "long_job_history",
            "Finished jobs (completed, failed, cancelled), newest first",
            {"200": _json(PAGE), **_errors(400)},
            parameters=[
                *PAGE_PARAMETERS,
                {
                    "name": "include_archived",
                    "in": "query",
                    "schema": {"type": "string", "pattern": FLAG_PATTERN, "default": "false"},
                    "description": "true/false (also 1/0, yes/no)",
                },
            ],
        )
    }
    paths[f"{PREFIX}-history/stats"] = {
        "get": _operation(
            "long_job_stats", "Counts and totals over every job", {"200": _json(STATS)}
        )
    }
    paths[f"{PREFIX}/{{job_id}}"] = {
        "get": _operation(
            "long_job", "One job: status and progress", {"200": _json(JOB), **_errors(404)}, **job
        ),
        "patch": _operation(
            "long_job_update",
            "Rename, archive or tag a job",
            {"200": _json(JOB), **_errors(400, 404, 415)},
            requestBody={
                "required": True,
                "content": {"application/json": {"schema": update_schema()}},
            },
            **job,
        ),
        "delete": _operation(
            "long_job_delete",
            "Cancel a job (?action=cancel, the default) or delete it and its files "
            "(?action=delete)",
            {
                "200": {
                    "description": "cancel: the job; delete: a confirmation",
                    "content": {"application/json": {"schema": {"oneOf": [JOB, DELETED]}}},
                },
                **_errors(404),
                **_state_error("cancel: the job is already finished"),
            },
            parameters=[
                JOB_PARAM,
                {
                    "name": "action",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["cancel", "delete"], "default": "cancel"},
                },
            ],
        ),
    }
    for action, method, summary in (
        ("pause", "put", "Pause a pending or processing job (after its current piece)"),
        ("resume", "put", "Resume a paused job where it stopped"),
        ("retry", "post", "Run a failed or cancelled job again"),
    ):
        extra: dict[str, Any] = dict(job)
        if action == "retry":
            extra["requestBody"] = {
                "required": False,
                "content": {"application/json": {"schema": RETRY_BODY}},
            }
        paths[f"{PREFIX}/{{job_id}}/{action}"] = {
            method: _operation(
                f"long_job_{action}",
                summary,
                {"200": _json(ACTION), **_errors(404), **_state_error()},
                **extra,
            )
        }
    paths[f"{PREFIX}/{{job_id}}/download"] = {
        "get": _operation(
            "long_job_download",
            "The finished file in the job's response_format (byte ranges)",
            {
                "200": {
                    "description": "the audio file (Content-Disposition: attachment)",
                    "content": {
                        kind: {"schema": {"type": "string", "format": "binary"}}
                        for kind in AUDIO_TYPES
                    },
                },
                **_errors(404),
                **_state_error("the job is not completed (`error` job_not_completed)"),
                "410": {**_errors(410)["410"], "description": "the file is gone from MEDIA_ROOT"},
            },
            **job,
        )
    }
    paths[f"{PREFIX}/{{job_id}}/sse"] = {
        "get": _operation(
            "long_job_events",
            "The job's progress as Server-Sent Events until it finishes",
            {
                "200": {
                    "description": SSE_DESCRIPTION,
                    "content": {"text/event-stream": {"schema": SSE_EVENT}},
                },
                **_errors(404),
            },
            **job,
        )
    }
    return paths


def add_longform_endpoints(result: dict, generator: Any, request: Any, public: bool) -> dict:
    from config.schema import ERROR

    result.setdefault("components", {}).setdefault("schemas", {}).setdefault("Error", ERROR)
    result.setdefault("paths", {}).update(longform_paths())
    return result
