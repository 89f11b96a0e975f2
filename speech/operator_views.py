"""HTTP views of the seed system's operator endpoints (speech.operator holds the logic).

Each parses its query or body, calls one service and answers JSON; errors are ApiErrors
(speech.views.api_view answers them, and config/handlers.py reshapes them on /v1/ paths).
Writes (POST/PUT/DELETE) need a key when PARLEY_REQUIRE_AUTH is on, like other speech writes.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse

from speech import operator
from speech.views import _form_data, api_view
from speech.views import voice_view as _voice_view
from streams.errors import ApiError
from streams.http import json_body


def _flag(request: HttpRequest, name: str, default: bool = False) -> bool:
    """A boolean query flag as FastAPI reads one (true/1/yes/on, false/0/no/off)."""
    return operator.flag(request.GET.get(name), name=name, default=default)


def _fields(request: HttpRequest, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The body's fields (JSON, multipart or urlencoded, as the seed's Form fields), each
    known; an empty body is no fields."""
    if request.content_type == "application/json":
        data = json_body(request)
        if not isinstance(data, dict):
            raise ApiError("invalid_body", "The JSON body must be an object.", field=None)
    elif request.content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        post, files = _form_data(request)
        for name in files:
            raise ApiError("unknown_field", f"Unknown file field {name!r}.", field=name)
        data = {key: post.get(key) for key in post}
    elif not request.body:
        data = {}
    else:
        raise ApiError(
            "unsupported_media_type",
            "Send JSON, multipart/form-data or application/x-www-form-urlencoded.",
            field="Content-Type",
            status_code=415,
        )
    for name in data:
        if name not in allowed:
            raise ApiError(
                "unknown_field", f"Unknown field {name!r}; send {', '.join(allowed)}.", field=name
            )
    return data


def _required(data: dict[str, Any], name: str) -> Any:
    if data.get(name) is None:
        raise ApiError(f"missing_{name}", f"{name} is required.", field=name)
    return data[name]


# --- status --------------------------------------------------------------------------------


@api_view("GET")
async def status_view(request: HttpRequest) -> HttpResponse:
    """GET /status (/v1/status, /processing, /processing/status)."""
    limit = operator.int_param(
        request.GET.get("history_limit"),
        name="history_limit",
        default=5,
        bounds=operator.STATUS_HISTORY_RANGE,
    )
    return JsonResponse(
        await operator.status(
            include_memory=_flag(request, "include_memory"),
            include_history=_flag(request, "include_history"),
            include_stats=_flag(request, "include_stats"),
            history_limit=limit,
        )
    )


@api_view("GET")
async def history_view(request: HttpRequest) -> HttpResponse:
    limit = operator.int_param(
        request.GET.get("limit"), name="limit", default=10, bounds=operator.HISTORY_LIMIT_RANGE
    )
    return JsonResponse(await operator.history(limit=limit))


@api_view("GET")
async def statistics_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await operator.statistics(include_memory=_flag(request, "include_memory")))


@api_view("POST")
async def history_clear_view(request: HttpRequest) -> HttpResponse:
    operator.require_confirm(request.GET.get("confirm"), "Clearing the history")
    return JsonResponse(await operator.clear_history())


# --- memory --------------------------------------------------------------------------------


@api_view("GET", "POST")
async def memory_view(request: HttpRequest) -> HttpResponse:
    """GET /memory (?cleanup=true runs a collection pass); POST /memory always cleans up."""
    cleanup = _flag(request, "cleanup") or request.method == "POST"
    return JsonResponse(
        await operator.memory(
            cleanup=cleanup, include_alerts=_flag(request, "include_alerts", True)
        )
    )


@api_view("POST")
async def memory_reset_view(request: HttpRequest) -> HttpResponse:
    operator.require_confirm(request.GET.get("confirm"), "Resetting memory tracking")
    return JsonResponse(await operator.memory_reset())


@api_view("GET")
async def memory_config_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(operator.memory_config())


@api_view("GET")
async def memory_recommendations_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await operator.memory_recommendations())


# --- info ----------------------------------------------------------------------------------


@api_view("GET")
async def info_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await operator.info())


@api_view("GET")
async def ping_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(operator.ping())


@api_view("GET")
async def config_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await operator.config())


@api_view("GET")
async def endpoints_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(operator.endpoints())


@api_view("GET")
async def languages_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await operator.languages(engine=request.GET.get("engine") or None))


# --- voice library -------------------------------------------------------------------------


@api_view("GET", "POST")
async def voice_aliases_view(request: HttpRequest, name: str) -> HttpResponse:
    """GET: a stored voice's aliases; POST `alias`: add one (201)."""
    if request.method == "GET":
        return JsonResponse(await operator.aliases_of(name))
    alias = _required(_fields(request, ("alias",)), "alias")
    return JsonResponse(await operator.alias_add(name=name, alias=alias), status=201)


@api_view("DELETE")
async def voice_alias_view(request: HttpRequest, name: str, alias: str) -> HttpResponse:
    return JsonResponse(await operator.alias_remove(name=name, alias=alias))


@api_view("GET")
async def voice_all_names_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await operator.all_names())


@api_view("GET", "POST", "DELETE")
async def default_voice_view(request: HttpRequest) -> HttpResponse:
    """GET the default voice; POST `voice_name` to set it; DELETE to reset it."""
    if request.method == "GET":
        return JsonResponse(await operator.default_voice())
    if request.method == "DELETE":
        return JsonResponse(await operator.default_voice_clear())
    name = _required(_fields(request, ("voice_name",)), "voice_name")
    return JsonResponse(await operator.default_voice_set(name=name))


@api_view("GET", "PUT", "PATCH", "DELETE")
async def voice_view(request: HttpRequest, name: str) -> HttpResponse:
    """PUT `new_name`: rename (the seed's); GET/PATCH/DELETE: speech.views.voice_view."""
    if request.method != "PUT":
        return await _voice_view(request, name)
    new_name = _required(_fields(request, ("new_name",)), "new_name")
    return JsonResponse(await operator.voice_rename(name=name, new_name=new_name))
