"""HTTP side of recordings: the seed's force stop, the saved files, and the records API."""

from __future__ import annotations

import json

from django.http import HttpRequest, JsonResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.http_ranges import ranged_response
from recordings import selectors, services
from recordings.models import Recording, RecordingStatus
from recordings.serializers import RecordingSerializer
from recordings.sessions import notify_stopped, run_blocking
from streams.errors import ApiError, echoed
from streams.runtime import runtime
from streams.serializers import ErrorSerializer

KEY_HEADER = "X-Streaming-Key"
# Body fields that may carry the key (`session_id` is the seed's name for it).
KEY_FIELDS = ("streaming_key", "key", "session_id")


def _key_from(request: HttpRequest) -> str | None:
    if key := request.headers.get(KEY_HEADER):
        return key.strip()
    body: object = None
    if request.content_type == "application/json":
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            body = None
    elif request.method == "POST":
        body = request.POST
    if hasattr(body, "get"):
        for name in KEY_FIELDS:
            value = body.get(name)  # type: ignore[union-attr]
            if isinstance(value, str) and value:
                return value
    return None


def _seed_error(exc: ApiError) -> JsonResponse:
    status = 500 if isinstance(exc, services.ProcessingFailed) else 400
    return JsonResponse({"error": exc.seed_message}, status=status)  # type: ignore[attr-defined]


@extend_schema(
    methods=["POST"],
    operation_id="streaming_force_stop",
    summary="Stop a recording session and save its audio (the seed's force stop)",
    tags=["recordings"],
    parameters=[
        OpenApiParameter(KEY_HEADER, str, OpenApiParameter.HEADER, description="the streaming key")
    ],
    request={
        "application/json": {
            "type": "object",
            "properties": {name: {"type": "string"} for name in KEY_FIELDS},
            "description": "the streaming key in one of these fields, if not in the header",
        },
        "application/x-www-form-urlencoded": {
            "type": "object",
            "properties": {name: {"type": "string"} for name in KEY_FIELDS},
        },
    },
    responses={
        200: {"type": "object", "properties": {"message": {"type": "string"}}},
        400: {"type": "object", "properties": {"error": {"type": "string"}}},
        500: {"type": "object", "properties": {"error": {"type": "string"}}},
    },
)
@csrf_exempt
async def force_stop_view(request: HttpRequest) -> JsonResponse:
    """POST /streaming/force_stop: the streaming key as X-Streaming-Key or in the body."""
    if request.method != "POST":
        response = JsonResponse({"error": "Method not allowed"}, status=405)
        response["Allow"] = "POST"
        return response
    try:
        recording = await run_blocking(services.recording_force_stop, key=_key_from(request))
    except (services.InvalidStreamingKey, services.EmptyBuffer, services.ProcessingFailed) as exc:
        return _seed_error(exc)
    await notify_stopped(recording)
    return JsonResponse({"message": "Audio processing complete"})


def _not_found(sid: str, detail: str | None = None) -> JsonResponse:
    error = ApiError("not_found", detail or f"No saved recording {echoed(sid)}.", field="sid")
    return JsonResponse(error.as_dict(), status=404)


def _saved_recording(sid: str) -> Recording | None:
    return (
        Recording.objects.select_related("stream", "stream__room")
        .filter(stream__stream_id=sid)
        .first()
    )


@extend_schema(
    methods=["GET"],
    operation_id="recording_file",
    summary="A saved recording as WAV, with Range support (206) so players can seek",
    tags=["recordings"],
    # Range, If-Range, 206 and 416: config/http_ranges.document_ranges.
    responses={(200, "audio/wav"): OpenApiTypes.BINARY, 404: ErrorSerializer},
)
@csrf_exempt  # read-only: other methods get a 405, not a CSRF page
async def audio_file_view(request: HttpRequest, sid: str) -> HttpResponseBase:
    """GET /static/audio/<sid>.wav: the saved WAV, with Range support so players can seek."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse({"error": "method_not_allowed", "detail": "Use GET."}, status=405)
        response["Allow"] = "GET, HEAD"
        return response
    recording = await runtime.run_db(_saved_recording, sid)
    if recording is None:
        return _not_found(sid)
    if recording.status != RecordingStatus.COMPLETE:
        return _not_found(
            sid, f"Recording {echoed(sid)} is {recording.status}; it has no file yet."
        )
    try:
        path = await run_blocking(services.recording_ensure_file, recording=recording)
        return ranged_response(request, path, content_type="audio/wav", filename=f"{sid}.wav")
    except (ApiError, OSError):
        return _not_found(sid, f"The file of recording {echoed(sid)} could not be rebuilt.")


STATUSES = [choice.value for choice in RecordingStatus]


class RecordingListView(generics.ListAPIView):
    serializer_class = RecordingSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=STATUSES),
            OpenApiParameter("room", str, description="recordings broadcast to this room"),
            OpenApiParameter("speaker", str),
        ],
        summary="Recordings, newest first",
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        params = self.request.query_params
        status = params.get("status")
        if status and status not in STATUSES:
            raise ApiError(
                "invalid_status", f"status must be one of {', '.join(STATUSES)}.", field="status"
            )
        return selectors.recordings_query(
            status=status, room=params.get("room"), speaker=params.get("speaker")
        )

    def list(self, request: Request, *args, **kwargs) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        base_url = request.build_absolute_uri("/").rstrip("/")
        return self.get_paginated_response(
            [selectors.recording_as_dict(r, base_url=base_url) for r in page]
        )


class RecordingDetailView(APIView):
    @extend_schema(responses={200: RecordingSerializer, 404: ErrorSerializer})
    def get(self, request: Request, sid: str) -> Response:
        recording = _saved_recording(sid)
        if recording is None:
            raise ApiError(
                "not_found", f"No recording {echoed(sid)}.", field="sid", status_code=404
            )
        base_url = request.build_absolute_uri("/").rstrip("/")
        return Response(selectors.recording_as_dict(recording, base_url=base_url))
