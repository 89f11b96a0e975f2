"""The two hot or long-waiting endpoints, as async views (DRF has no async views).

POST /audio is the ingest path: parsing stays on the loop, the one transaction runs on the
runtime's database executor. The events long-poll waits on the channel layer, not a thread.
"""

from __future__ import annotations

import asyncio
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import ValidationError

from spectate.hub import hub
from streams import selectors, services
from streams.auth import authenticate, require_writer, resolve_speaker
from streams.errors import ApiError, validation_error_body
from streams.http import error_response, json_object, method_not_allowed
from streams.models import Room
from streams.params import MAX_EVENT_ID, json_loads, parse_int, parse_number
from streams.runtime import runtime
from streams.serializers import chunk_from_request

EVENT_TYPES = {"state", "audio_chunk", "speech", "playback_done", "input", "turn"}


def _parse_chunk(request: HttpRequest) -> tuple[dict[str, Any], bytes | None]:
    content_type = request.content_type or ""
    try:
        body = request.body
    except RequestDataTooBig as exc:
        raise ApiError(
            "chunk_too_large", "The request body is too large.", field="data", status_code=413
        ) from exc
    if content_type == "application/octet-stream":
        return request.GET.dict(), body
    if content_type not in ("application/json", ""):
        raise ApiError(
            "unsupported_media_type",
            "Send JSON (application/json) or raw PCM (application/octet-stream).",
            field="Content-Type",
            status_code=415,
        )
    return json_object(body, loads=json_loads), None


@csrf_exempt
async def audio_view(request: HttpRequest) -> JsonResponse:
    """POST /audio: one chunk of a stream (JSON with base64 `data`, or a raw PCM body)."""
    if request.method != "POST":
        return method_not_allowed("POST")
    try:
        values, raw = _parse_chunk(request)
        authorization = request.headers.get("Authorization")
        principal = await runtime.run_db(authenticate, authorization) if authorization else None
        require_writer(principal)
        speaker = resolve_speaker(principal, values.get("speaker"), "agent")
        chunk = chunk_from_request(values, raw_data=raw, speaker=speaker)
        result = await runtime.run_room_db(chunk.room_name, services.chunk_ingest, chunk)
    except ApiError as exc:
        return error_response(exc)
    except ValidationError as exc:
        return JsonResponse(validation_error_body(exc.detail), status=400)
    return JsonResponse(result)


def _poll_params(request: HttpRequest) -> tuple[int, list[str] | None, float]:
    after = parse_int(
        request.GET.get("after") or 0, field="after", minimum=0, maximum=MAX_EVENT_ID, text=True
    )
    types = None
    if raw_types := request.GET.get("types"):
        types = [t.strip() for t in raw_types.split(",") if t.strip()]
        unknown = sorted(set(types) - EVENT_TYPES)
        if unknown:
            raise ApiError(
                "invalid_types",
                f"Unknown event type(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(EVENT_TYPES))}.",
                field="types",
            )
    wait = parse_number(
        request.GET.get("wait") or 0,
        field="wait",
        minimum=0,
        maximum=settings.PARLEY_LONGPOLL_MAX_S,
        text=True,
    )
    return after, types, wait


def _poll_once(room_name: str, after: int, types: list[str] | None) -> tuple[list, int]:
    room = Room.objects.filter(name=room_name).first()
    if room is None:
        return [], 0  # no log yet: it starts at 0
    # Read the high-water mark first: everything up to it is committed and examined.
    last_id = room.last_event_id
    if after > last_id:
        # The client is ahead of the log (an id from elsewhere): say where the log is, as
        # the spectator socket does, instead of skipping the events in between for good.
        return [], last_id
    events, more = selectors.events_after(room, after=after, types=types, up_to=last_id)
    if more:
        last_id = events[-1]["id"]
    return events, last_id


class _PollWaiter:
    """A long-poll as a room listener (spectate.hub.Listener): woken by anything new."""

    def __init__(self, after: int) -> None:
        self.after = after
        self.ended = False
        self._woken = asyncio.Event()

    def deliver(self, message: dict[str, Any]) -> None:
        self._woken.set()

    def behind(self, mark: int) -> bool:
        return mark > self.after

    def gone(self) -> bool:
        return self.ended

    async def wait(self, seconds: float) -> bool:
        """True if woken within `seconds`."""
        try:
            await asyncio.wait_for(self._woken.wait(), seconds)
        except TimeoutError:
            return False
        self._woken.clear()
        return True


async def room_events_view(request: HttpRequest, room: str) -> JsonResponse:
    """GET /api/rooms/{room}/events: the event log over HTTP, long-polling up to `wait`."""
    if request.method != "GET":
        return method_not_allowed("GET")
    try:
        services.validate_room_name(room)
        after, types, wait = _poll_params(request)
        if authorization := request.headers.get("Authorization"):
            # Reading needs no key, but a wrong one is the client's mistake to hear about.
            await runtime.run_db(authenticate, authorization)
    except ApiError as exc:
        return error_response(exc)
    events, last_id = await runtime.run_db(_poll_once, room, after, types)
    after = min(after, last_id)
    if events or wait <= 0:
        return JsonResponse({"events": events, "last_id": last_id})
    # The process's room listeners (spectate/hub.py) wake the wait: on a live event, or,
    # when Redis is down or lost it, on the watchdog's read of the room's high-water mark.
    waiter = _PollWaiter(after)
    await hub.join(room, waiter)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    try:
        # Re-read after listening, so an event committed in between is not missed.
        events, last_id = await runtime.run_db(_poll_once, room, after, types)
        while not events and (remaining := deadline - loop.time()) > 0:
            if not await waiter.wait(remaining):
                break
            events, last_id = await runtime.run_db(_poll_once, room, after, types)
    finally:
        waiter.ended = True
        hub.leave(room, waiter)
    return JsonResponse({"events": events, "last_id": last_id})
