"""HTTP views of long text jobs: parse, call one service or selector, shape the answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt

from config.http_ranges import ranged_response
from longform import runner, selectors, services
from longform.models import FINISHED, LongStatus
from speech.encoding import CONTENT_TYPES
from speech.services import voice_check
from speech.tts import has_speech
from speech.views import api_view
from streams.errors import ApiError
from streams.http import json_body
from streams.pagination import MAX_OFFSET, Pagination
from streams.params import parse_int
from streams.runtime import runtime

# How often a progress stream looks at the job's row (any worker can serve it).
SSE_POLL_S = 0.5
SSE_KEEPALIVE_S = 15.0


def _job_id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise ApiError(
            "invalid_job_id", f"{raw!r} is not a job id (a UUID).", field="job_id"
        ) from None


def _page(request: HttpRequest) -> tuple[int, int]:
    raw_limit = request.GET.get("limit", "")
    limit = (
        min(
            parse_int(raw_limit, field="limit", minimum=1, maximum=10**9, text=True),
            Pagination.max_limit,
        )
        if raw_limit != ""
        else Pagination.default_limit
    )
    raw_offset = request.GET.get("offset", "")
    offset = (
        parse_int(raw_offset, field="offset", minimum=0, maximum=MAX_OFFSET, text=True)
        if raw_offset != ""
        else 0
    )
    return limit, offset


def _status_filter(request: HttpRequest) -> str | None:
    status = request.GET.get("status")
    if status is None:
        return None
    if status not in LongStatus.values:
        raise ApiError(
            "invalid_status",
            f"status must be one of {', '.join(LongStatus.values)}.",
            field="status",
        )
    return status


def _flag(request: HttpRequest, name: str, default: bool) -> bool:
    raw = request.GET.get(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise ApiError(f"invalid_{name}", f"{name} must be true or false.", field=name)


async def _create_job(request: HttpRequest) -> HttpResponse:
    long = services.long_request(json_body(request))
    if not has_speech(long.text):
        raise ApiError(
            "no_audio",
            "input has nothing to say (no letters or digits).",
            field="input",
            status_code=422,
        )
    await voice_check(voice=long.voice, model=long.model)  # 404 voice_not_found before 202
    job = await runtime.run_db(services.job_create, request=long)
    runner.kick()
    body = selectors.job_dict(job)
    return JsonResponse(
        {
            "job_id": body["job_id"],
            "status": job.status,
            "message": "Job submitted for processing",
            "total_chunks": job.total_pieces,
            "status_url": body["status_url"],
            "sse_url": body["sse_url"],
        },
        status=202,
        headers={"Location": body["status_url"]},
    )


@csrf_exempt
async def jobs_view(request: HttpRequest) -> HttpResponse:
    """GET: a page of jobs (?status, ?limit, ?offset); POST: start a job (202). A refused
    body is 422 (as on every synthesis endpoint), a refused query 400 (as on every list)."""
    if request.method == "POST":
        return await _create(request)
    return await _list(request)


@api_view("POST", validation_status=422)
async def _create(request: HttpRequest) -> HttpResponse:
    return await _create_job(request)


@api_view("GET", "POST")
async def _list(request: HttpRequest) -> HttpResponse:
    limit, offset = _page(request)
    return JsonResponse(
        await runtime.run_db(
            selectors.job_list, status=_status_filter(request), limit=limit, offset=offset
        )
    )


@api_view("GET", "PATCH", "DELETE")
async def job_view(request: HttpRequest, job_id: str) -> HttpResponse:
    """GET: status and progress; PATCH: display_name/is_archived/tags; DELETE:
    ?action=cancel (default) or ?action=delete (the job and its files)."""
    key = _job_id(job_id)
    if request.method == "GET":
        job = await runtime.run_db(selectors.job_by_id, key)
    elif request.method == "PATCH":
        job = await runtime.run_db(services.job_update, job_id=key, data=json_body(request))
    else:
        action = request.GET.get("action", "cancel")
        if action == "delete":
            await runtime.run_db(services.job_delete, job_id=key)
            return JsonResponse({"message": f"Job {key} deleted", "job_id": str(key)})
        if action != "cancel":
            raise ApiError("invalid_action", "action must be cancel or delete.", field="action")
        job = await runtime.run_db(services.job_cancel, job_id=key)
    return JsonResponse(selectors.job_dict(job))


def _action(name: str, service: Any, method: str) -> Any:
    @api_view(method)
    async def view(request: HttpRequest, job_id: str) -> HttpResponse:
        key = _job_id(job_id)
        kwargs: dict[str, Any] = {}
        if name == "retry" and request.body:
            body = json_body(request)
            unknown = set(body) - {"preserve_chunks"}
            if unknown:
                field = sorted(unknown)[0]
                raise ApiError("unknown_field", f"Unknown field {field!r}.", field=field)
            preserve = body.get("preserve_chunks", True)
            if not isinstance(preserve, bool):
                raise ApiError(
                    "invalid_preserve_chunks",
                    "preserve_chunks must be true or false.",
                    field="preserve_chunks",
                )
            kwargs["preserve_chunks"] = preserve
        job = await runtime.run_db(service, job_id=key, **kwargs)
        if job.status == LongStatus.PENDING:
            runner.kick()
        return JsonResponse(
            {
                "success": True,
                "message": f"Job {key}: {name} done",
                "status": job.status,
                "job": selectors.job_dict(job),
            }
        )

    view.__name__ = view.__qualname__ = f"job_{name}_view"
    return view


job_pause_view = _action("pause", services.job_pause, "PUT")
job_resume_view = _action("resume", services.job_resume, "PUT")
job_retry_view = _action("retry", services.job_retry, "POST")


@api_view("GET", "HEAD")
async def job_download_view(request: HttpRequest, job_id: str) -> HttpResponseBase:
    """The finished file in the job's response_format, with byte ranges; 409 until done."""
    job = await runtime.run_db(selectors.job_by_id, _job_id(job_id))
    if job.status != LongStatus.COMPLETED or not job.output_name:
        raise ApiError(
            "job_not_completed",
            f"The job is {job.status}; its file exists once it is completed.",
            field="job_id",
            status_code=409,
        )
    path = services.media_path(job.output_name)
    if not await asyncio.to_thread(path.exists):
        raise ApiError(
            "output_missing", "The job's file is gone from the media directory.", status_code=410
        )
    return ranged_response(
        request,
        path,
        content_type=CONTENT_TYPES[job.response_format],
        filename=f"long_text_{job.id}.{job.response_format}",
        disposition="attachment",
    )


def _event(name: str, job_id: str, data: dict[str, Any]) -> bytes:
    payload = {
        "job_id": job_id,
        "event_type": name,
        "data": data,
        "timestamp": timezone.now().isoformat(),
    }
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


async def _progress_events(key: uuid.UUID) -> AsyncIterator[bytes]:
    last: dict[str, Any] | None = None
    quiet = 0.0
    while True:
        try:
            job = await runtime.run_db(selectors.job_by_id, key)
        except ApiError as error:  # deleted meanwhile
            yield _event("error", str(key), {"error": error.code, "message": error.detail})
            return
        progress = selectors.progress_of(job)
        if progress != last:
            last, quiet = progress, 0.0
            yield _event("progress", str(key), progress)
        if job.status in FINISHED:
            yield _event(job.status, str(key), selectors.job_dict(job))
            return
        if quiet >= SSE_KEEPALIVE_S:
            quiet = 0.0
            yield b": keep-alive\n\n"
        await asyncio.sleep(SSE_POLL_S)
        quiet += SSE_POLL_S


@api_view("GET")
async def job_sse_view(request: HttpRequest, job_id: str) -> HttpResponse:
    """Progress as Server-Sent Events: `progress` on each change, then one of `completed`,
    `failed`, `cancelled` (the whole job) and the end of the stream."""
    key = _job_id(job_id)
    await runtime.run_db(selectors.job_by_id, key)  # 404 before the stream starts
    response = StreamingHttpResponse(_progress_events(key), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


@api_view("GET")
async def history_view(request: HttpRequest) -> HttpResponse:
    """Finished jobs (completed, failed, cancelled), newest first; archived ones with
    ?include_archived=true."""
    limit, offset = _page(request)
    return JsonResponse(
        await runtime.run_db(
            selectors.job_list,
            status=_status_filter(request),
            limit=limit,
            offset=offset,
            finished_only=True,
            include_archived=_flag(request, "include_archived", False),
        )
    )


@api_view("GET")
async def history_stats_view(request: HttpRequest) -> HttpResponse:
    return JsonResponse(await runtime.run_db(selectors.history_stats))
