"""HTTP views of speech synthesis. Streaming ones are plain async views (DRF has no async
views); each parses, calls one service and wraps the result."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    QueryDict,
    StreamingHttpResponse,
)
from django.http.multipartparser import MultiPartParser, MultiPartParserError
from django.http.response import HttpResponseBase
from django.utils.datastructures import MultiValueDict
from django.views.decorators.csrf import csrf_exempt

from config.error_shapes import openai_error, validation_detail
from config.errors import exception_response
from config.http_ranges import ranged_response
from speech import cache, job_audio, selectors, streaming, system, voices
from speech.services import live_job
from speech.tts import VoiceSample
from streams.auth import authenticate, require_writer
from streams.errors import ApiError
from streams.http import json_body
from streams.runtime import runtime

logger = logging.getLogger(__name__)
View = Callable[..., Awaitable[HttpResponse]]


# Refusals of the request's own fields or body: "request validation" in FastAPI's terms.
_VALIDATION = re.compile(r"^(?:missing_|invalid_|malformed_)|^unknown_field$")


def _error(exc: ApiError, *, validation_status: int = 400) -> JsonResponse:
    """The JSON answer to `exc` (config/handlers.py puts it in OpenAI's shape on /v1/...).

    With `validation_status=422` (the synthesis endpoints, as the seed's FastAPI system
    answers) a refused field or body is 422 with FastAPI's `detail` list; a limit (a text
    over the maximum) stays 400.
    """
    if validation_status != 400 and exc.status_code == 400 and _VALIDATION.match(exc.code):
        body = openai_error(
            exc.code,
            exc.detail,
            validation_status,
            param=exc.field,
            detail=validation_detail(exc.code, exc.detail, exc.field),
            **exc.extra,
        )
        return JsonResponse(body, status=validation_status)
    return JsonResponse(exc.as_dict(), status=exc.status_code)


def api_view(*methods: str, validation_status: int = 400) -> Callable[[View], View]:
    """Method check, ApiError -> JSON, and no unexpected exception leaves as an HTML 500.

    `validation_status`: the status of a refused field or body (see `_error`).
    """

    def decorate(view: View) -> View:
        @csrf_exempt
        @wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                response = _error(
                    ApiError(
                        "method_not_allowed",
                        f"Use {' or '.join(methods)}.",
                        status_code=405,
                    )
                )
                response["Allow"] = ", ".join(methods)
                return response
            try:
                if settings.PARLEY_REQUIRE_AUTH and request.method not in ("GET", "HEAD"):
                    # Synthesis costs CPU: with keys required, it is a write like POST /audio.
                    authorization = request.headers.get("Authorization")
                    require_writer(await runtime.run_db(authenticate, authorization))
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return _error(exc, validation_status=validation_status)
            except RequestDataTooBig:
                return _error(
                    ApiError("body_too_large", "The request body is too large.", status_code=413)
                )
            except Exception as exc:
                # The API layer's answers first (database down: 503 with Retry-After).
                known = exception_response(request, exc)
                if known is not None:
                    return known
                logger.exception("speech view %s failed", view.__name__)
                return _error(
                    ApiError("internal_error", "The server failed; see its log.", status_code=500)
                )

        return wrapper

    return decorate


def _form_data(request: HttpRequest) -> tuple[QueryDict, MultiValueDict]:
    """The form fields and files of any method: Django parses them only for POST, so a
    multipart PATCH would otherwise look empty (and change nothing)."""
    if request.method == "POST":
        return request.POST, request.FILES
    if request.content_type == "multipart/form-data":
        # The request reads as a stream (its body if already read), with the same upload
        # handlers and size limits as POST.
        parser = MultiPartParser(request.META, request, request.upload_handlers, request.encoding)
        return parser.parse()
    return QueryDict(request.body, encoding=request.encoding), MultiValueDict()


def _form_body(request: HttpRequest) -> tuple[dict[str, Any], VoiceSample | None, bool]:
    """Multipart (or urlencoded) fields, the optional voice_file, and whether the values are
    form strings; a JSON body is accepted too."""
    if request.content_type == "application/json":
        return json_body(request), None, False
    if request.content_type not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(
            "unsupported_media_type",
            "Send multipart/form-data with the fields and an optional voice_file.",
            field="Content-Type",
            status_code=415,
        )
    try:
        post, files = _form_data(request)
        fields = {key: post.get(key) for key in post}
    except MultiPartParserError as exc:
        raise ApiError("malformed_multipart", f"The multipart body is invalid: {exc}.") from exc
    if "voice_file" in fields:
        raise ApiError(
            "invalid_voice_file",
            "voice_file must be a file part, not a text field.",
            field="voice_file",
        )
    for name in files:
        if name != "voice_file":
            raise ApiError(
                "unknown_field", f"Unknown file field {name!r}; send voice_file.", field=name
            )
    upload = files.get("voice_file")
    sample = voices.voice_sample_from_upload(upload) if upload is not None else None
    return fields, sample, True


async def _speak(
    request: HttpRequest,
    fields: dict[str, Any],
    *,
    from_form: bool,
    wav_stream: bool,
    voice_sample: VoiceSample | None,
    upload: bool = False,
) -> HttpResponse:
    speech = streaming.speech_request(
        fields, from_form=from_form, wav_stream=wav_stream, upload=upload
    )
    opened = await streaming.open_speech(speech, endpoint=request.path, voice_sample=voice_sample)
    body = streaming.sse_body(opened) if speech.sse else streaming.audio_body(opened)
    response = StreamingHttpResponse(body)
    for name, value in opened.headers().items():
        response[name] = value
    return response


@api_view("POST", validation_status=422)
async def speech_view(request: HttpRequest) -> HttpResponse:
    """POST /v1/audio/speech: OpenAI-compatible speech, streamed (audio or SSE)."""
    return await _speak(
        request, json_body(request), from_form=False, wav_stream=False, voice_sample=None
    )


@api_view("POST", validation_status=422)
async def speech_stream_view(request: HttpRequest) -> HttpResponse:
    """POST /v1/audio/speech/stream: one continuous WAV."""
    return await _speak(
        request, json_body(request), from_form=False, wav_stream=True, voice_sample=None
    )


@api_view("POST", validation_status=422)
async def speech_upload_view(request: HttpRequest) -> HttpResponse:
    """POST /v1/audio/speech/upload: like /v1/audio/speech, multipart with voice_file."""
    fields, sample, from_form = _form_body(request)
    return await _speak(
        request, fields, from_form=from_form, wav_stream=False, voice_sample=sample, upload=True
    )


@api_view("POST", validation_status=422)
async def speech_stream_upload_view(request: HttpRequest) -> HttpResponse:
    """POST /v1/audio/speech/stream/upload: continuous WAV, multipart with voice_file."""
    fields, sample, from_form = _form_body(request)
    return await _speak(
        request, fields, from_form=from_form, wav_stream=True, voice_sample=sample, upload=True
    )


@api_view("GET", "DELETE")
async def speech_cache_view(request: HttpRequest) -> HttpResponse:
    """GET /v1/audio/speech/cache: settings and contents of the synthesis cache; DELETE:
    empty it (docs/speech.md "Cache")."""
    if request.method == "DELETE":
        return JsonResponse(await cache.cache_clear())
    return JsonResponse(await cache.cache_info())


# --- progress ------------------------------------------------------------------------------


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(
            "invalid_job_id", f"{raw!r} is not a job id (a UUID).", field="job_id"
        ) from None


@api_view("GET")
async def progress_view(request: HttpRequest) -> HttpResponse:
    """GET /v1/status/progress: the most recent active job, in the seed's shape."""
    return JsonResponse(await system.latest_progress())


@api_view("GET")
async def job_progress_view(request: HttpRequest, job_id: str) -> HttpResponse:
    """GET /v1/status/progress/{job_id}: one job's progress (active or finished)."""
    key = _job_id(job_id)
    live = live_job(key)
    if live is not None:
        return JsonResponse(selectors.progress_of(live))
    job = await runtime.run_db(selectors.job_by_id, key)
    if job is None:
        raise ApiError("job_not_found", f"No speech job {job_id}.", field="job_id", status_code=404)
    return JsonResponse(selectors.progress_of(job))


@api_view("GET", "HEAD")
async def job_audio_view(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """GET /v1/audio/speech/jobs/{job_id}/audio.wav: what the job synthesized, as a WAV with
    byte ranges (speech/job_audio.py); 404 while it runs or once its audio was pruned."""
    key = _job_id(job_id)
    path = job_audio.job_audio_path(key)
    if path is None:
        if live_job(key) is None and await runtime.run_db(selectors.job_by_id, key) is None:
            raise ApiError(
                "job_not_found", f"No speech job {job_id}.", field="job_id", status_code=404
            )
        raise ApiError(
            "audio_not_kept",
            f"Speech job {job_id} has no audio here: it is still running, made none, or its "
            "audio was pruned (PARLEY_SPEECH_AUDIO_MAX_BYTES).",
            field="job_id",
            status_code=404,
        )
    return ranged_response(request, path, content_type="audio/wav", filename=f"{key}.wav")


# --- health, models (/memory: speech.operator_views) --------------------------------------


@api_view("GET")
async def health_view(request: HttpRequest) -> HttpResponse:
    body = await system.health()
    return JsonResponse(body, status=200 if body["status"] == "healthy" else 503)


@api_view("GET")
async def models_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await system.models())


@api_view("GET")
async def model_view(request: HttpRequest, model: str) -> HttpResponse:
    return JsonResponse(await system.model(model))


# --- voices --------------------------------------------------------------------------------


@api_view("GET", "POST")
async def voices_view(request: HttpRequest) -> HttpResponse:
    """GET: engine, OpenAI and stored voices; POST: store a voice (sample or preset)."""
    if request.method == "GET":
        return JsonResponse(await voices.voice_list(engine=request.GET.get("engine") or None))
    fields, sample, from_form = _form_body(request)
    voice = await voices.voice_create(fields=fields, sample=sample, from_form=from_form)
    return JsonResponse(voice, status=201)


@api_view("GET", "PATCH", "DELETE")
async def voice_view(request: HttpRequest, name: str) -> HttpResponse:
    if request.method == "GET":
        return JsonResponse(await voices.voice_detail(name))
    if request.method == "DELETE":
        await voices.voice_delete(name=name)
        return HttpResponse(status=204)
    fields, sample, from_form = _form_body(request)
    return JsonResponse(
        await voices.voice_update(name=name, fields=fields, sample=sample, from_form=from_form)
    )


@api_view("GET", "HEAD")
async def voice_download_view(request: HttpRequest, name: str) -> HttpResponseBase:
    """The stored sample as uploaded, or a short WAV preview of a preset / engine voice, with
    byte ranges (206) so players can seek."""
    download = await voices.voice_download(name)
    return ranged_response(
        request,
        download.content,
        content_type=download.content_type,
        filename=download.filename,
        disposition="attachment",
    )
