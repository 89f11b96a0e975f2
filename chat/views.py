"""Async views of chat (seed 004) and say. Thin: parse, authorize, call one service.

Errors: the seed's endpoints answer its two spelled-out bodies to the letter
(`{"error": "Audio stream not found or expired", "code": "HTTP_404"}`, `... "HTTP_503"}`);
every other refusal is the project's `{"error", "detail", "field"}`, plus `code` there.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from rest_framework.exceptions import ValidationError

from chat import services
from chat.encoding import encoded, encoding_for, fixed_pieces
from chat.say import SayIn, room_say
from chat.serializers import (
    AudioStreamRequestSerializer,
    ChatRequestSerializer,
    SayRequestSerializer,
)
from chat.synthesis import TTS_UNAVAILABLE, TTSUnavailable, open_synthesis
from config.errors import exception_response
from config.http_ranges import ranged_response
from streams.auth import Speaker, authenticate, require_writer, resolve_speaker
from streams.errors import ApiError, validation_error_body
from streams.http import json_body, method_not_allowed
from streams.runtime import runtime

logger = logging.getLogger(__name__)

STREAM_NOT_FOUND = "Audio stream not found or expired"
AUDIO_FILE_NOT_FOUND = "Audio file not found"
STREAM_HEADERS = {
    "Cache-Control": "no-cache, no-store",
    "X-Accel-Buffering": "no",  # nginx: pass each piece on as it comes
}

View = Callable[..., Awaitable[HttpResponse]]


def seed_error(message: str, status: int) -> JsonResponse:
    return JsonResponse({"error": message, "code": f"HTTP_{status}"}, status=status)


def api_error(body: dict[str, Any], status: int, *, seed: bool) -> JsonResponse:
    if seed:
        body = {**body, "code": f"HTTP_{status}"}
    return JsonResponse(body, status=status)


def endpoint(method: str, *, seed: bool, head: bool = False) -> Callable[[View], View]:
    """One method (and HEAD with `head`), and every refusal as JSON (never an HTML page or a
    500 for bad input). CORS: config/settings/base.py, for every API path."""
    methods = (method, "HEAD") if head else (method,)

    def decorate(view: View) -> View:
        @csrf_exempt
        @functools.wraps(view)
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                return method_not_allowed(", ".join(methods))
            try:
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                return api_error(exc.as_dict(), exc.status_code, seed=seed)
            except ValidationError as exc:
                return api_error(validation_error_body(exc.detail), 400, seed=seed)
            except TTSUnavailable as exc:
                logger.warning("no TTS engine: %s", exc)
                if seed:
                    return seed_error(TTS_UNAVAILABLE, 503)
                body = {"error": "tts_unavailable", "detail": TTS_UNAVAILABLE, "field": None}
                return api_error(body, 503, seed=False)
            except Exception as exc:
                # The API layer's answers first (database down: 503 with Retry-After).
                known = exception_response(request, exc)
                if known is not None:
                    return known
                logger.exception("%s %s failed", request.method, request.path)
                body = {"error": "internal_error", "detail": "See the server log.", "field": None}
                return api_error(body, 500, seed=seed)

        return wrapper

    return decorate


def validated(serializer_class: type, data: dict[str, Any]) -> dict[str, Any]:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return dict(serializer.validated_data)


async def writer(request: HttpRequest) -> Speaker | None:
    """The API key's speaker (None without a key); refuses when PARLEY_REQUIRE_AUTH wants one."""
    authorization = request.headers.get("Authorization")
    principal = await runtime.run_db(authenticate, authorization) if authorization else None
    require_writer(principal)
    return principal


def streaming(body, content_type: str, extra: dict[str, str] | None = None) -> HttpResponse:
    response = StreamingHttpResponse(body, content_type=content_type)
    for name, value in {**STREAM_HEADERS, **(extra or {})}.items():
        response[name] = value
    return response


@endpoint("POST", seed=True)
async def chat_view(request: HttpRequest) -> HttpResponse:
    """POST /chat: the answer, and with use_tts its audio as a file URL or a stream URL."""
    body = json_body(request)
    principal = await writer(request)
    data = validated(ChatRequestSerializer, body)
    user = data.get("user") or (principal.name if principal else "anonymous")
    if principal is not None and user != principal.name:
        raise ApiError(
            "user_mismatch",
            f"This API key belongs to {principal.name!r}, not {user!r}.",
            field="user",
            status_code=403,
        )
    exchange = await services.chat_exchange_create(
        services.ChatIn(
            text=data["text"],
            user=user,
            use_tts=data["use_tts"],
            stream_audio=data["stream_audio"],
        )
    )
    return JsonResponse(services.chat_response(exchange))


@endpoint("GET", seed=True)
async def audio_stream_get_view(request: HttpRequest, request_id: str) -> HttpResponse:
    """GET /audio/stream/{request_id}: the answer's WAV, 4 KB pieces, while it is synthesized."""
    exchange = await runtime.run_db(services.chat_stream_claim, request_id=request_id)
    if exchange is None:
        return seed_error(STREAM_NOT_FOUND, 404)
    synthesis = await services.chat_stream_open(exchange)
    encoding = services.STREAM_ENCODING
    response = streaming(
        services.chat_stream_body(exchange, synthesis), encoding.content_type, encoding.headers()
    )
    response["Content-Disposition"] = f'inline; filename="{request_id}.wav"'
    return response


@endpoint("GET", seed=True, head=True)
async def audio_file_view(request: HttpRequest, request_id: str) -> HttpResponseBase:
    """GET /audio/{request_id}.wav: the saved answer of a POST /chat with stream_audio false,
    with byte ranges (206) so players can seek."""
    wav = await runtime.run_db(services.chat_audio_file, request_id=request_id)
    if wav is None:
        return seed_error(AUDIO_FILE_NOT_FOUND, 404)
    return ranged_response(request, wav, content_type="audio/wav", filename=f"{request_id}.wav")


@endpoint("POST", seed=True)
async def audio_stream_post_view(request: HttpRequest) -> HttpResponse:
    """POST /audio/stream: any text straight to audio in `format` at `quality`, piece by piece."""
    body = json_body(request)
    await writer(request)
    data = validated(AudioStreamRequestSerializer, body)
    encoding = encoding_for(data["format"], data["quality"])
    synthesis = await open_synthesis(
        data["text"],
        voice=data.get("voice"),
        speed=data["speed"],
        kind="stream",
        endpoint="/audio/stream",
        sample_rate=encoding.sample_rate_hz,
        response_format=encoding.format,
        params={"streaming_quality": encoding.level},
    )
    pieces = fixed_pieces(encoded(synthesis.pcm(), encoding), data["chunk_size"])
    extra = {**encoding.headers(), "X-Chunk-Size": str(data["chunk_size"])}
    return streaming(synthesis.counted(pieces), encoding.content_type, extra)


@endpoint("POST", seed=False)
async def say_view(request: HttpRequest, room: str) -> HttpResponse:
    """POST /api/rooms/{room}/say: speak text into the room as the speaker's turn."""
    body = json_body(request)
    principal = await writer(request)
    data = validated(SayRequestSerializer, body)
    speaker = resolve_speaker(principal, data.get("speaker"), "agent")
    result = await room_say(
        SayIn(
            room=room,
            speaker=speaker,
            text=data["text"],
            voice=data.get("voice"),
            speed=data["speed"],
            stream_id=data.get("stream_id"),
            chunk_ms=data["chunk_ms"],
        )
    )
    return JsonResponse(result)
