"""POST /v1/audio/transcriptions: OpenAI's speech to text (docs/agent.md).

A plain async view like the speech ones (speech.views.api_view: method check, API keys when
PARLEY_REQUIRE_AUTH, JSON errors only): it parses the multipart body within the size limit,
calls agents.transcription.transcription_create and wraps the result.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from django.conf import settings
from django.core.exceptions import TooManyFieldsSent, TooManyFilesSent
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler
from django.http import (
    HttpRequest,
    HttpResponse,
    JsonResponse,
    QueryDict,
    StreamingHttpResponse,
)
from django.http.multipartparser import MultiPartParserError
from django.utils.datastructures import MultiValueDict

from agents.transcription import (
    SSE_CONTENT_TYPE,
    AudioFile,
    transcription_body,
    transcription_create,
    transcription_events,
)
from speech.views import api_view
from streams.errors import ApiError

# Room for the other form fields and the multipart framing around a file at the limit.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _too_large(what: str) -> ApiError:
    limit = settings.PARLEY_STT_MAX_BYTES
    return ApiError(
        "file_too_large",
        f"{what}; the largest file accepted is {limit} bytes (PARLEY_STT_MAX_BYTES).",
        field="file",
        status_code=413,
    )


class UploadLimit(FileUploadHandler):
    """First of the upload handlers: stops the parse once the files pass the limit, so no
    more than PARLEY_STT_MAX_BYTES of them is ever copied out of the request body (a body
    without a Content-Length is caught here rather than before parsing)."""

    def __init__(self, request: HttpRequest) -> None:
        super().__init__(request)
        self.limit = settings.PARLEY_STT_MAX_BYTES
        self.received = 0

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        self.received += len(raw_data)
        if self.received > self.limit:
            raise _too_large(f"The file is over {self.limit} bytes")
        return raw_data

    def file_complete(self, file_size: int) -> None:
        return None  # the next handler (memory or temporary file) keeps the file


def _form(request: HttpRequest) -> tuple[QueryDict, MultiValueDict]:
    """The multipart fields and files; refuses other bodies and bodies over the limit before
    reading them. Blocking (it reads the spooled body): run it off the event loop."""
    if request.content_type != "multipart/form-data":
        raise ApiError(
            "unsupported_media_type",
            "Send multipart/form-data with the audio in a file part named 'file' (as "
            "OpenAI's API and SDKs do).",
            field="Content-Type",
            status_code=415,
        )
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > settings.PARLEY_STT_MAX_BYTES + MULTIPART_OVERHEAD_BYTES:
        raise _too_large(f"The request body is {length} bytes")
    request.upload_handlers.insert(0, UploadLimit(request))
    try:
        return request.POST, request.FILES
    except (MultiPartParserError, TooManyFieldsSent, TooManyFilesSent) as exc:
        raise ApiError("malformed_multipart", f"The multipart body is invalid: {exc}.") from exc


def _audio_file(upload: UploadedFile) -> AudioFile:
    name = Path(upload.name or "").name
    if hasattr(upload, "temporary_file_path"):  # a large upload, already on disk
        return AudioFile(size=upload.size or 0, name=name, path=Path(upload.temporary_file_path()))
    content = upload.read()
    return AudioFile(size=len(content), name=name, content=content)


@api_view("POST")
async def transcriptions_view(request: HttpRequest) -> HttpResponse:
    """POST /v1/audio/transcriptions: the text of an audio file (OpenAI's contract)."""
    fields, files = await asyncio.to_thread(_form, request)
    upload = files.get("file")
    if upload is None and "file" in fields:
        raise ApiError(
            "invalid_file", "file must be a file part (with a filename), not text.", field="file"
        )
    granularities = [
        *fields.getlist("timestamp_granularities[]"),
        *fields.getlist("timestamp_granularities"),
    ]
    result = await transcription_create(
        fields=fields,
        file=_audio_file(upload) if upload is not None else None,
        granularities=granularities,
    )
    if result.request.stream:
        response = StreamingHttpResponse(
            transcription_events(result), content_type=SSE_CONTENT_TYPE
        )
        for name, value in SSE_HEADERS.items():
            response[name] = value
        return response
    body, content_type = transcription_body(result)
    if isinstance(body, dict):
        return JsonResponse(
            body, content_type=content_type, json_dumps_params={"ensure_ascii": False}
        )
    return HttpResponse(body, content_type=content_type)
