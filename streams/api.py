"""DRF views of the core: floor, room snapshot, streams. Thin: one service or selector each."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from django.http.response import HttpResponseBase
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.http_ranges import ranged_response
from streams import selectors, services
from streams.audio import wav_header
from streams.auth import Speaker, resolve_speaker
from streams.errors import ApiError, echoed
from streams.models import Chunk, Stream
from streams.serializers import (
    ErrorSerializer,
    FloorClaimSerializer,
    FloorHeldSerializer,
    RoomSummarySerializer,
    StateSerializer,
    StreamSerializer,
    TurnSerializer,
)

# Errors every write may answer: bad input, no key, a key that may not do this, bad media.
WRITE_ERRORS = {400: ErrorSerializer, 401: ErrorSerializer, 403: ErrorSerializer}


def _principal(request: Request) -> Speaker | None:
    return request.user if isinstance(request.user, Speaker) else None


class FloorView(APIView):
    @extend_schema(
        request=FloorClaimSerializer,
        responses={
            200: TurnSerializer,
            201: TurnSerializer,
            409: FloorHeldSerializer,
            415: ErrorSerializer,
            **WRITE_ERRORS,
        },
        summary="Claim the room's floor",
    )
    def post(self, request: Request, room: str) -> Response:
        services.validate_room_name(room)
        body = FloorClaimSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        speaker = resolve_speaker(_principal(request), body.validated_data["speaker"], "agent")
        services.validate_speaker(speaker)
        turn, created = services.floor_claim(room_name=room, speaker=speaker)
        return Response(
            selectors.turn_as_dict(turn),
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )

    @extend_schema(
        parameters=[
            OpenApiParameter("speaker", str, description="who gives the floor up"),
            OpenApiParameter("force", bool, description="moderator: cut the holder off"),
        ],
        responses={200: TurnSerializer, 409: ErrorSerializer, **WRITE_ERRORS},
        summary="Give the floor up, or cut the speaker off (?force=1)",
    )
    def delete(self, request: Request, room: str) -> Response:
        services.validate_room_name(room)
        force_param = request.query_params.get("force", "0").lower()
        if force_param not in {"0", "1", "true", "false", ""}:
            raise ApiError("invalid_force", "force must be 0 or 1.", field="force")
        force = force_param in {"1", "true"}
        principal = _principal(request)
        if force and principal is not None and not principal.is_moderator:
            raise ApiError(
                "not_moderator",
                "Only a moderator's key may force the floor.",
                field="force",
                status_code=403,
            )
        requested = request.query_params.get("speaker")
        if not requested:
            body = FloorClaimSerializer(data=request.data if isinstance(request.data, dict) else [])
            body.is_valid(raise_exception=True)
            requested = body.validated_data["speaker"]
        if requested is not None:
            services.validate_speaker(requested)
        speaker = resolve_speaker(principal, requested, "agent") if not force else requested
        turn = services.floor_yield(room_name=room, speaker=speaker, force=force)
        return Response(selectors.turn_as_dict(turn))


class RoomView(APIView):
    @extend_schema(
        responses={200: StateSerializer, 400: ErrorSerializer}, summary="The room's state snapshot"
    )
    def get(self, request: Request, room: str) -> Response:
        services.validate_room_name(room)
        return Response(selectors.room_snapshot(room))


def _parse_active(raw: str | None) -> bool | None:
    """`?active=`: true/1 or false/0 (any case); absent is no filter."""
    if raw is None:
        return None
    value = raw.lower()
    if value in {"1", "true"}:
        return True
    if value in {"0", "false"}:
        return False
    raise ApiError("invalid_active", "active must be true or false (1 or 0).", field="active")


# RFC 3339's date-time: a full date, "T", a full time, and an offset ("Z" or +hh:mm).
RFC3339_DATE_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt](\d{2}:\d{2}:\d{2})(?:\.(\d{1,6})\d*)?([Zz]|[+-]\d{2}:\d{2})"
)


def _parse_since(raw: str | None) -> datetime | None:
    """`?since=`: an RFC 3339 date-time (`2025-01-31T12:00:00Z`, `…T13:00:00+01:00`).

    A moment beyond what Python's datetime holds in UTC (year 1 or 9999 with an offset) is
    clamped to its bound, so every valid date-time is accepted."""
    if raw is None:
        return None
    invalid = ApiError(
        "invalid_since",
        "since must be an RFC 3339 date-time such as 2025-01-31T12:00:00Z.",
        field="since",
    )
    match = RFC3339_DATE_TIME.fullmatch(raw) if len(raw) <= 64 else None
    if match is None:
        raise invalid
    date, time, fraction, offset = match.groups()
    text = f"{date}T{time}" + (f".{fraction.ljust(6, '0')}" if fraction else "")
    text += "+00:00" if offset in {"Z", "z"} else offset
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:  # a day or hour out of range
        raise invalid from None
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return (datetime.max if moment.year == datetime.max.year else datetime.min).replace(
            tzinfo=UTC
        )


class RoomListView(generics.ListAPIView):
    serializer_class = RoomSummarySerializer

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "active",
                bool,
                description="only rooms whose floor is held or a stream is live (true), "
                "or only idle ones (false)",
            ),
            OpenApiParameter(
                "since",
                OpenApiTypes.DATETIME,
                description="only rooms with activity at or after this moment",
            ),
            OpenApiParameter(
                "ordering",
                str,
                enum=sorted(selectors.ROOM_ORDERINGS),
                default="-last_activity_at",
                description="most recent activity first by default",
            ),
        ],
        summary="Rooms with their state, most recently active first",
        responses={200: RoomSummarySerializer(many=True), 400: ErrorSerializer},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        params = self.request.query_params
        ordering = params.get("ordering", "-last_activity_at")
        if ordering not in selectors.ROOM_ORDERINGS:
            raise ApiError(
                "invalid_ordering",
                f"ordering must be one of {', '.join(sorted(selectors.ROOM_ORDERINGS))}.",
                field="ordering",
            )
        return selectors.rooms_listed(
            active=_parse_active(params.get("active")),
            since=_parse_since(params.get("since")),
            ordering=ordering,
        )

    def list(self, request: Request, *args, **kwargs) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response(selectors.room_summaries(page))


STREAM_STATUSES = {"streaming", "awaiting_gaps", "playing", "played", "interrupted"}


class StreamListView(generics.ListAPIView):
    serializer_class = StreamSerializer

    @extend_schema(
        parameters=[
            OpenApiParameter("room", str),
            OpenApiParameter("speaker", str),
            OpenApiParameter("status", str, enum=sorted(STREAM_STATUSES)),
        ],
        summary="Streams, newest first",
        responses={200: StreamSerializer(many=True), 400: ErrorSerializer},
    )
    def get(self, request: Request, *args, **kwargs) -> Response:
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        queryset = Stream.objects.select_related("room").order_by("-created_at", "-id")
        params = self.request.query_params
        if room := params.get("room"):
            queryset = queryset.filter(room__name=services.validate_room_name(room))
        if speaker := params.get("speaker"):
            queryset = queryset.filter(speaker=speaker)
        if stream_status := params.get("status"):
            if stream_status not in STREAM_STATUSES:
                raise ApiError(
                    "invalid_status",
                    f"status must be one of {', '.join(sorted(STREAM_STATUSES))}.",
                    field="status",
                )
            queryset = queryset.filter(status=stream_status)
        return queryset

    def list(self, request: Request, *args, **kwargs) -> Response:
        page = self.paginate_queryset(self.get_queryset())
        return self.get_paginated_response([selectors.stream_as_dict(s) for s in page])


def _stream_or_404(stream_id: str) -> Stream:
    stream = Stream.objects.select_related("room").filter(stream_id=stream_id).first()
    if stream is None:
        raise ApiError(
            "not_found", f"No stream {echoed(stream_id)}.", field="stream_id", status_code=404
        )
    return stream


class StreamDetailView(APIView):
    @extend_schema(responses={200: StreamSerializer, 404: ErrorSerializer})
    def get(self, request: Request, stream_id: str) -> Response:
        return Response(selectors.stream_as_dict(_stream_or_404(stream_id)))


class StreamAudioView(APIView):
    @extend_schema(
        responses={(200, "audio/wav"): OpenApiTypes.BINARY, 404: ErrorSerializer},
        summary="The audio received so far, as a WAV file",
    )
    def get(self, request: Request, stream_id: str) -> HttpResponseBase:
        stream = _stream_or_404(stream_id)
        pieces = Chunk.objects.filter(stream=stream).order_by("seq").values_list("data", flat=True)
        audio = b"".join(bytes(piece) for piece in pieces)
        wav = wav_header(stream.pcm_format, len(audio)) + audio
        # Byte ranges (206/416) and HEAD: config/http_ranges.py, like every audio URL.
        return ranged_response(
            request, wav, content_type="audio/wav", filename=f"{stream.stream_id}.wav"
        )
