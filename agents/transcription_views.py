"""POST /v1/audio/transcriptions: OpenAI's speech to text (docs/agent.md).

A plain async view like the speech ones (speech.views.api_view: method check, API keys when
PARLEY_REQUIRE_AUTH, JSON errors only): it parses the multipart body within the size limit,
calls agents.transcription.transcription_create and wraps the result.
"""

from __future__ import annotations

import asyncio
import tempfile
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
from django.http.multipartparser import MultiPartParser, MultiPartParserError
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
READ_CHUNK_BYTES = 64 * 1024
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
    whose Content-Length is under the limit plus the room for the other fields may still
    carry a file over it)."""

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


def _content_length(request: HttpRequest) -> int | None:
    """The request's Content-Length; None when it has none (a chunked upload)."""
    raw = (request.META.get("CONTENT_LENGTH") or "").strip()
    if not raw:
        return None
    try:
        length = int(raw)
    except ValueError:
        length = -1
    if length < 0:
        raise ApiError(
            "invalid_content_length",
            f"Content-Length must be a number of bytes; got {raw[:40]!r}.",
            field="Content-Length",
        )
    return length


def _parse_unsized(request: HttpRequest, limit: int) -> tuple[QueryDict, MultiValueDict]:
    """A body sent without a Content-Length (``Transfer-Encoding: chunked``). Django's parser
    reads a missing length as an empty body, so the body is copied, no further than
    ``limit``, to a file spooled like Django's own, and parsed with the length it has."""
    with tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE) as body:
        size = 0
        while chunk := request.read(READ_CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise _too_large(
                    f"The request body (without a Content-Length) is over {limit} bytes"
                )
            body.write(chunk)
        body.seek(0)
        meta = {**request.META, "CONTENT_LENGTH": str(size)}
        return MultiPartParser(meta, body, request.upload_handlers, request.encoding).parse()


def _form(request: HttpRequest) -> tuple[QueryDict, MultiValueDict]:
    """The multipart fields and files; refuses other bodies, and bodies whose Content-Length
    is over the limit before reading them. Blocking (it reads the spooled body): run it off
    the event loop."""
    if request.content_type != "multipart/form-data":
        raise ApiError(
            "unsupported_media_type",
            "Send multipart/form-data with the audio in a file part named 'file' (as "
            "OpenAI's API and SDKs do).",
            field="Content-Type",
            status_code=415,
        )
    limit = settings.PARLEY_STT_MAX_BYTES + MULTIPART_OVERHEAD_BYTES
    length = _content_length(request)
    if length is not None and length > limit:
        raise _too_large(f"The request body is {length} bytes")
    request.upload_handlers.insert(0, UploadLimit(request))
    try:
        if length is None:
            return _parse_unsized(request, limit)
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
