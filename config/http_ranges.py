"""Every audio URL's answer, with byte ranges: one implementation for all of them.

`ranged_response` turns a body (bytes in memory, or a file on disk) into the answer to a GET
or HEAD: 200 with the whole body, 206 with one range of it, or 416 when the range is outside
it, always with `Accept-Ranges: bytes`, `Content-Length` and a strong `ETag` (so `If-Range`
works). The parsing is pure (streams/ranges.py). Used by /audio/{request_id}.wav,
/api/streams/{id}/audio.wav, /v1/voices/{name}/download and /static/audio/{sid}.wav; the
OpenAPI schema documents them all through `document_ranges` (a drf-spectacular hook).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase

from streams.ranges import (
    RangeNotSatisfiable,
    content_etag,
    content_range,
    file_etag,
    if_range_allows,
    parse_range,
    unsatisfied_range,
)

READ_BLOCK = 256 * 1024

# The audio URLs that answer ranges (OpenAPI paths), for `document_ranges`.
RANGED_PATHS = (
    "/audio/{request_id}.wav",
    "/api/streams/{stream_id}/audio.wav",
    "/v1/voices/{name}/download",
    "/static/audio/{sid}.wav",
    "/v1/audio/speech/long/{job_id}/download",
    "/v1/audio/speech/jobs/{job_id}/audio.wav",
)


async def _file_blocks(path: Path, first: int, length: int) -> AsyncIterator[bytes]:
    # An async iterator: Django would read a sync one whole into memory under ASGI.
    with open(path, "rb") as handle:  # noqa: ASYNC230 - local file, opened once
        handle.seek(first)
        left = length
        while left > 0:
            block = await asyncio.to_thread(handle.read, min(READ_BLOCK, left))
            if not block:
                return
            left -= len(block)
            yield block


def ranged_response(
    request: HttpRequest | Any,
    body: bytes | Path,
    *,
    content_type: str,
    filename: str | None = None,
    disposition: str = "inline",
) -> HttpResponseBase:
    """The answer to a GET or HEAD of `body` (bytes, or the path of a file read in 256 KiB
    blocks as it is sent), honouring the request's `Range` and `If-Range` headers.

    - no range, a malformed or multi-range one, or an If-Range that no longer matches: 200
      with the whole body;
    - one satisfiable range: 206 with `Content-Range: bytes first-last/size` and those bytes;
    - a range outside the body: 416 with `Content-Range: bytes */size` and a JSON error
      (`range_not_satisfiable`, field `Range`);
    - HEAD: the same status and headers as GET, no body.

    `request` is a Django or DRF request; `filename` sets `Content-Disposition` (`disposition`
    is `inline` or `attachment`). Raises OSError if the file cannot be read.
    """
    if isinstance(body, Path):
        stat = body.stat()
        size, etag = stat.st_size, file_etag(stat.st_size, stat.st_mtime_ns)
    else:
        size, etag = len(body), content_etag(body)
    byte_range: tuple[int, int] | None = None
    header = request.headers.get("Range")
    if header and if_range_allows(request.headers.get("If-Range"), etag):
        try:
            byte_range = parse_range(header, size)
        except RangeNotSatisfiable:
            return _not_satisfiable(header, size)
    first, last = byte_range if byte_range else (0, size - 1)
    length = last - first + 1 if size else 0
    status = 206 if byte_range else 200
    response: HttpResponseBase
    if request.method == "HEAD":
        response = HttpResponse(status=status)
    elif isinstance(body, Path):
        response = StreamingHttpResponse(_file_blocks(body, first, length), status=status)
    else:
        response = HttpResponse(body[first : first + length], status=status)
    response["Content-Type"] = content_type
    response["Content-Length"] = str(length)
    response["Accept-Ranges"] = "bytes"
    response["ETag"] = etag
    if byte_range:
        response["Content-Range"] = content_range(first, last, size)
    if filename is not None:
        response["Content-Disposition"] = f'{disposition}; filename="{filename}"'
    return response


def _not_satisfiable(header: str, size: int) -> JsonResponse:
    response = JsonResponse(
        {
            "error": "range_not_satisfiable",
            "detail": f"The range {header[:100]!r} is outside the {size} bytes of this file.",
            "field": "Range",
        },
        status=416,
    )
    response["Content-Range"] = unsatisfied_range(size)
    response["Accept-Ranges"] = "bytes"
    return response


# --- OpenAPI -----------------------------------------------------------------------------------

_RANGE_PARAMETERS = [
    {
        "name": "Range",
        "in": "header",
        "required": False,
        "description": "one byte range: `bytes=0-99`, `bytes=100-` or `bytes=-100` (the last "
        "100 bytes); several ranges or a malformed header get the whole file (200)",
        "schema": {"type": "string"},
    },
    {
        "name": "If-Range",
        "in": "header",
        "required": False,
        "description": "the ETag of an earlier answer: the range is honoured only if the file "
        "is still the same, else the whole file comes back (200)",
        "schema": {"type": "string"},
    },
]
_RANGE_HEADERS = {
    "Accept-Ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
    "ETag": {"schema": {"type": "string"}, "description": "strong entity tag, for If-Range"},
}


def document_ranges(result: dict, generator: Any, request: Any, public: bool) -> dict:
    """drf-spectacular hook: on each RANGED_PATHS GET, the Range and If-Range headers and the
    206 (`Content-Range: bytes first-last/size`) and 416 (`Content-Range: bytes */size`)
    answers. HEAD answers like GET without a body."""
    for path in RANGED_PATHS:
        operation = result.get("paths", {}).get(path, {}).get("get")
        if operation is None:
            continue
        names = {p.get("name") for p in operation.get("parameters", [])}
        operation.setdefault("parameters", []).extend(
            p for p in _RANGE_PARAMETERS if p["name"] not in names
        )
        responses = operation["responses"]
        whole = responses.get("200", {})
        whole.setdefault("headers", {}).update(_RANGE_HEADERS)
        responses["206"] = {
            "description": "the requested byte range of the file (HEAD: its headers only)",
            "headers": {
                **_RANGE_HEADERS,
                "Content-Range": {
                    "schema": {"type": "string"},
                    "description": "bytes first-last/size",
                },
            },
            "content": whole.get("content", {}),
        }
        responses["416"] = {
            "description": "the range starts past the end of the file "
            "(`Content-Range: bytes */size`)",
            "headers": {"Content-Range": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
    return result
