"""OpenAPI entries for the speech views (plain async views drf-spectacular cannot see).

The request schemas come from the same field table the views validate with
(speech.params), so the documentation cannot drift from the behaviour.
"""

from __future__ import annotations

from typing import Any

from speech.operator_openapi import operator_paths
from speech.params import SPEECH_FIELDS
from speech.voices import CREATE_FIELDS, UPDATE_FIELDS

ERROR_REF = {"$ref": "#/components/schemas/Error"}
TAG = "speech"


def _errors(*codes: int) -> dict[str, Any]:
    return {
        str(code): {"description": "error", "content": {"application/json": {"schema": ERROR_REF}}}
        for code in codes
    }


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(
    properties: dict[str, Any], required: list[str] | None = None, *, closed: bool = False
) -> dict[str, Any]:
    """An object schema; ``closed`` for request bodies, whose unknown fields are refused."""
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    if closed:
        schema["additionalProperties"] = False
    return schema


SPEECH_REQUEST = _object(
    {spec.name: spec.openapi() for spec in SPEECH_FIELDS},
    [spec.name for spec in SPEECH_FIELDS if spec.required],
    closed=True,
)
VOICE_FILE = {"type": "string", "format": "binary", "description": "reference audio to clone"}
SPEECH_UPLOAD = _object(
    {
        **SPEECH_REQUEST["properties"],
        # A form field is text: {"id": name} and a multi-voice list are for JSON bodies only.
        "input": {
            **SPEECH_REQUEST["properties"]["input"]["oneOf"][0],
            "description": "Text to convert to speech (a multi-voice list: send JSON)",
        },
        "voice": SPEECH_REQUEST["properties"]["voice"]["oneOf"][0],
        "voice_file": VOICE_FILE,
    },
    SPEECH_REQUEST["required"],
    closed=True,
)
AUDIO_TYPES = ("audio/mpeg", "audio/ogg", "audio/aac", "audio/flac", "audio/wav", "audio/pcm")
SSE_DESCRIPTION = (
    "With stream_format=sse: `event: speech.audio.info` (sample_rate, channels, "
    "bits_per_sample, response_format, job_id), then `speech.audio.delta` events (`audio`: "
    "base64 of the next bytes of the response_format stream; raw PCM by default), then "
    "`speech.audio.done` with `usage` (input_tokens: words and punctuation marks of the input; "
    "output_tokens: one per started 20 ms of audio), or `speech.audio.error` on a failure."
)
SSE_EVENT = {
    "type": "object",
    "description": "One Server-Sent Event: its name and its JSON data (SSE_DESCRIPTION).",
    "properties": {
        "event": {
            "type": "string",
            "enum": [
                "speech.audio.info",
                "speech.audio.delta",
                "speech.audio.done",
                "speech.audio.error",
            ],
        },
        "data": {"type": "string", "description": "a JSON object whose `type` is the event"},
    },
    "required": ["event", "data"],
}
AUDIO_RESPONSE = {
    "description": "Audio streamed while it is synthesized (chunked). " + SSE_DESCRIPTION,
    "headers": {
        "X-Speech-Job-Id": {"schema": {"type": "string", "format": "uuid"}},
        "X-Sample-Rate": {"schema": {"type": "integer"}},
        "X-Speed-Applied": {"schema": {"type": "number"}},
        "X-Cache": {
            "schema": {"type": "string", "enum": ["HIT", "MISS", "BYPASS"]},
            "description": "HIT: served from the synthesis cache; MISS: synthesized (stored "
            "if it completes); BYPASS: not cacheable (cache off, engine not cached, a voice "
            "sample)",
        },
    },
    "content": {
        **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in AUDIO_TYPES},
        "text/event-stream": {"schema": SSE_EVENT},
    },
}
WAV_RESPONSE = {
    "description": "One continuous WAV: a 44-byte header with 0xFFFFFFFF sizes, then PCM16 "
    "mono as it is synthesized.",
    "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
}
PROGRESS = _object(
    {
        "is_processing": {"type": "boolean"},
        "status": {
            "type": "string",
            "enum": ["idle", "initializing", "generating_audio", "completed", "cancelled", "error"],
        },
        "current_step": {"type": "string"},
        "current_chunk": {"type": "integer"},
        "total_chunks": {"type": "integer"},
        "progress_percentage": {"type": "number"},
        "duration_seconds": {"type": "number"},
        "estimated_completion": {"type": "number", "nullable": True, "description": "epoch s"},
        "text_preview": {"type": "string"},
        "job_id": {"type": "string", "format": "uuid", "nullable": True},
        "job_status": {"type": "string"},
        "error": {"type": "string", "nullable": True},
    }
)
VOICE = _object(
    {
        "name": {"type": "string"},
        "source": {"type": "string", "enum": ["openai", "engine", "stored"]},
        "kind": {"type": "string", "enum": ["alias", "engine", "preset", "sample"]},
        "engine": {"type": "string"},
        "engine_voice": {"type": "string", "nullable": True},
        "language": {"type": "string"},
        "gender": {"type": "string", "nullable": True},
        "description": {"type": "string"},
        "sample": {"type": "object", "nullable": True},
        "download_url": {"type": "string"},
    }
)
VOICE_FORM = {
    "multipart/form-data": {
        "schema": _object(
            {**{spec.name: spec.openapi() for spec in CREATE_FIELDS}, "voice_file": VOICE_FILE},
            ["name"],
            closed=True,
        )
    },
    "application/json": {
        "schema": _object({s.name: s.openapi() for s in CREATE_FIELDS}, ["name"], closed=True)
    },
}
VOICE_PATCH = {
    "multipart/form-data": {
        "schema": _object(
            {**{spec.name: spec.openapi() for spec in UPDATE_FIELDS}, "voice_file": VOICE_FILE},
            closed=True,
        )
    },
    "application/json": {
        "schema": _object({s.name: s.openapi() for s in UPDATE_FIELDS}, closed=True)
    },
}
MODEL = _object(
    {
        "id": {"type": "string"},
        "object": {"type": "string"},
        "engine": {"type": "string"},
        "kind": {"type": "string"},
        "available": {"type": "boolean"},
        "sample_rate": {"type": "integer", "nullable": True},
        "voice_cloning": {"type": "boolean", "nullable": True},
        "params": _object(
            {
                "effective": {"type": "object", "additionalProperties": {"type": "string"}},
                "accepted_without_effect": {
                    "type": "object",
                    "additionalProperties": {"type": "string"},
                },
                "engine_notes": {"type": "string"},
            }
        ),
    }
)
NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
JOB_PARAM = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _with_models(schema: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """The request schema with `model` limited to what this server's registry knows ("" and
    a missing model mean the default engine)."""
    model = {**schema["properties"]["model"], "enum": ["", *models, None]}
    model.pop("pattern", None)
    properties = {**schema["properties"], "model": model}
    text = properties["input"]
    if "oneOf" in text:  # a multi-voice segment's own model: the same names
        as_text, as_list = text["oneOf"]
        items = as_list["items"]
        items = {**items, "properties": {**items["properties"], "model": model}}
        properties["input"] = {**text, "oneOf": [as_text, {**as_list, "items": items}]}
    return {**schema, "properties": properties}


def _wav_only(schema: dict[str, Any]) -> dict[str, Any]:
    properties = dict(schema["properties"])
    properties["response_format"] = {**properties["response_format"], "enum": ["wav", None]}
    properties["response_format"].pop("default", None)
    properties["stream_format"] = {**properties["stream_format"], "enum": ["audio", None]}
    return {**schema, "properties": properties}


def _speech_post(
    op_id: str, summary: str, *, upload: bool, wav: bool, models: list[str]
) -> dict[str, Any]:
    json_schema = _with_models(SPEECH_REQUEST, models)
    form_schema = _with_models(SPEECH_UPLOAD, models)
    if wav:
        # One continuous WAV: other formats and SSE are refused (invalid_<field>).
        json_schema, form_schema = _wav_only(json_schema), _wav_only(form_schema)
    content = ({"multipart/form-data": {"schema": form_schema}} if upload else {}) | {
        "application/json": {"schema": json_schema}
    }
    return {
        "post": {
            "operationId": op_id,
            "summary": summary,
            "tags": [TAG],
            "requestBody": {"required": True, "content": content},
            "responses": {
                "200": WAV_RESPONSE if wav else AUDIO_RESPONSE,
                **_errors(400, 405, 413, 415, 422, 502, 503),
            },
        }
    }


def _get(op_id: str, summary: str, schema: dict[str, Any], *codes: int, **extra: Any) -> dict:
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "tags": [TAG],
            "responses": {"200": _json(schema), **_errors(*codes)},
            **extra,
        }
    }


def speech_paths() -> dict[str, Any]:
    from speech.services import get_registry

    registry = get_registry()
    engines = registry.names()
    models = sorted({*registry.models(), *engines})
    speech = {
        "audio/speech": _speech_post(
            "speech",
            "Text to speech, OpenAI-compatible, streamed",
            upload=False,
            wav=False,
            models=models,
        ),
        "audio/speech/stream": _speech_post(
            "speech_stream",
            "Text to one continuous WAV stream (seed)",
            upload=False,
            wav=True,
            models=models,
        ),
        "audio/speech/upload": _speech_post(
            "speech_upload",
            "Speech with an uploaded voice sample",
            upload=True,
            wav=False,
            models=models,
        ),
        "audio/speech/stream/upload": _speech_post(
            "speech_stream_upload",
            "Continuous WAV with a voice sample",
            upload=True,
            wav=True,
            models=models,
        ),
    }
    paths: dict[str, Any] = {}
    for route, item in speech.items():
        paths[f"/v1/{route}"] = item
        alias = {
            method: {
                **operation,
                "operationId": "bare_" + operation["operationId"],
                "summary": operation["summary"] + f" (alias of /v1/{route})",
            }
            for method, operation in item.items()
        }
        paths[f"/{route}"] = alias
    cache_info = _object(
        {
            "enabled": {"type": "boolean"},
            "directory": {"type": "string"},
            "max_bytes": {"type": "integer", "description": "0: the cache is off"},
            "max_entry_bytes": {"type": "integer"},
            "engines": {"type": "array", "items": {"type": "string"}},
            "entries": {"type": "integer"},
            "bytes": {"type": "integer", "description": "the entries' file sizes"},
        }
    )
    cleared = _object(
        {"cleared_entries": {"type": "integer"}, "cleared_bytes": {"type": "integer"}}
    )
    for prefix, op_prefix in (("/v1", ""), ("", "bare_")):
        paths[f"{prefix}/audio/speech/cache"] = {
            **_get(
                f"{op_prefix}speech_cache",
                "The synthesis cache: settings, entries and bytes (hits and misses: "
                "/status/statistics)",
                cache_info,
            ),
            "delete": {
                "operationId": f"{op_prefix}speech_cache_clear",
                "summary": "Empty the synthesis cache (the job records stay)",
                "tags": [TAG],
                "responses": {"200": _json(cleared), **_errors(401, 403)},
            },
        }
    voice_list = _object(
        {
            "voices": {"type": "array", "items": VOICE},
            "count": {"type": "integer"},
            "default_engine": {"type": "string"},
        }
    )
    paths["/v1/voices"] = {
        **_get(
            "voice_list",
            "Engine voices, OpenAI names and stored voices",
            voice_list,
            400,
            parameters=[
                {
                    "name": "engine",
                    "in": "query",
                    "schema": {"type": "string", "enum": ["", *engines]},
                    "description": "empty or missing: every engine",
                }
            ],
        ),
        "post": {
            "operationId": "voice_create",
            "summary": "Store a voice: a name plus a sample file or an engine preset",
            "tags": [TAG],
            "requestBody": {"required": True, "content": VOICE_FORM},
            "responses": {
                "201": _json(VOICE, "created"),
                **_errors(400, 409, 413, 415, 422, 503),
            },
        },
    }
    paths["/v1/voices/{name}"] = {
        **_get("voice_detail", "One voice", VOICE, 404, parameters=[NAME_PARAM]),
        "patch": {
            "operationId": "voice_update",
            "summary": "Change a stored voice",
            "tags": [TAG],
            "parameters": [NAME_PARAM],
            "requestBody": {"required": True, "content": VOICE_PATCH},
            "responses": {"200": _json(VOICE), **_errors(400, 404, 409, 413, 415, 422)},
        },
        "delete": {
            "operationId": "voice_delete",
            "summary": "Delete a stored voice and its sample",
            "tags": [TAG],
            "parameters": [NAME_PARAM],
            "responses": {"204": {"description": "deleted"}, **_errors(404, 409)},
        },
    }
    paths["/v1/voices/{name}/download"] = {
        "get": {
            "operationId": "voice_download",
            "summary": "The stored sample, or a WAV preview of a preset or engine voice",
            "tags": [TAG],
            "parameters": [NAME_PARAM],
            "responses": {
                "200": {
                    "description": "audio file",
                    "content": {"audio/*": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_errors(404),
            },
        }
    }
    paths["/v1/status/progress"] = _get(
        "speech_progress",
        "The most recent active synthesis (seed shape). Pushed live over WebSocket at "
        "/v1/status/progress/ws (all jobs) and /v1/status/progress/{job_id}/ws (one job)",
        PROGRESS,
    )
    paths["/v1/audio/speech/jobs/{job_id}/audio.wav"] = {
        "get": {
            "operationId": "speech_job_audio",
            "summary": "What a finished speech job synthesized, as a WAV (PCM16 mono at the "
            "job's rate; kept up to PARLEY_SPEECH_AUDIO_MAX_BYTES, oldest pruned first)",
            "tags": [TAG],
            "parameters": [JOB_PARAM],
            "responses": {
                "200": {
                    "description": "WAV file",
                    "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}}},
                },
                **_errors(400, 404),
            },
        }
    }
    paths["/v1/status/progress/{job_id}"] = _get(
        "speech_job_progress", "One job's progress", PROGRESS, 400, 404, parameters=[JOB_PARAM]
    )
    paths["/v1/models"] = _get(
        "models",
        "Models and engines; per engine, which parameters take effect and which are "
        "accepted without effect",
        _object({"object": {"type": "string"}, "data": {"type": "array", "items": MODEL}}),
    )
    paths["/v1/models/{model}"] = _get(
        "model",
        "One model",
        MODEL,
        404,
        parameters=[
            {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
        ],
    )
    paths["/health"] = _get(
        "health", "Engines and database; 503 when the default engine is unavailable", {}, 503
    )
    # The seed's operator endpoints (/memory among them): speech.operator_openapi.
    for path, item in operator_paths().items():
        paths.setdefault(path, {}).update(item)
    return paths


def add_speech_endpoints(result: dict, generator: Any, request: Any, public: bool) -> dict:
    from config.schema import ERROR

    result.setdefault("components", {}).setdefault("schemas", {}).setdefault("Error", ERROR)
    result.setdefault("paths", {}).update(speech_paths())
    for path, operations in plain_view_paths(generator).items():
        result["paths"].setdefault(path, {}).update(operations)
    # Components the plain views' annotations registered (serializers they name).
    built = generator.registry.build({}).get("schemas", {})
    for name, schema in built.items():
        result["components"]["schemas"].setdefault(name, schema)
    return result


# --- plain views annotated with @extend_schema -----------------------------------------------

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _url_callbacks(patterns: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """(route regex or pattern, callback) of every URL pattern, includes walked."""
    from django.urls import URLPattern, URLResolver

    found: list[tuple[str, Any]] = []
    for pattern in patterns:
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += _url_callbacks(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            found.append((route, pattern.callback))
    return found


def plain_view_paths(generator: Any) -> dict[str, dict[str, Any]]:
    """Operations of plain (non-DRF) views annotated with drf-spectacular's ``@extend_schema``.

    drf-spectacular only introspects DRF views, so an async function view's annotation would
    be ignored. Here each such view is described through a stand-in APIView carrying the
    annotation, for every method whose annotation gives a ``summary`` (the convention that
    marks a method as documented: ``@extend_schema(methods=["POST"], summary=...)``).
    """
    from django.urls import get_resolver
    from drf_spectacular.generators import EndpointEnumerator
    from drf_spectacular.openapi import AutoSchema
    from drf_spectacular.settings import spectacular_settings
    from rest_framework.views import APIView

    enumerator = EndpointEnumerator()
    paths: dict[str, dict[str, Any]] = {}
    for route, callback in _url_callbacks(get_resolver().url_patterns):
        schema_class = getattr(callback, "kwargs", {}).get("schema")
        if hasattr(callback, "cls") or not (
            isinstance(schema_class, type) and issubclass(schema_class, AutoSchema)
        ):
            continue
        path = enumerator.get_path_from_regex(route)
        path = path if path.startswith("/") else f"/{path}"
        view_class = type(callback.__name__, (APIView,), {"schema": schema_class()})
        for method in _METHODS:
            view = view_class()
            view.args, view.kwargs, view.format_kwarg = (), {}, None
            view.swagger_fake_view = True
            view.request = spectacular_settings.GET_MOCK_REQUEST(method, path, view, None)
            schema = view.schema
            schema.method = method
            if not schema.get_summary():
                continue  # the annotation does not cover this method
            operation = schema.get_operation(path, route, "", method, generator.registry)
            if operation:
                paths.setdefault(path, {})[method.lower()] = operation
    return paths
