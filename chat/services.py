"""POST /chat and its audio (seed 004): answer, speak, hand out a stream URL any worker serves.

Database work is in small sync functions (run off the event loop with `runtime.run_db`); the
async ones orchestrate the responder and the engine around them.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from chat import responders
from chat.encoding import Encoding, encoded, encoding_for, fixed_pieces
from chat.models import AudioStatus, ChatExchange
from chat.synthesis import Synthesis, ensure_engine, open_synthesis
from streams.audio import PcmFormat, wav_header
from streams.runtime import runtime

HISTORY_TURNS = 6
# GET /audio/stream/{id}: the seed's format, WAV 22050 Hz mono 16-bit in 4 KB pieces.
STREAM_ENCODING: Encoding = encoding_for("wav", "medium")
STREAM_PIECE_BYTES = 4096


@dataclass(frozen=True)
class ChatIn:
    text: str
    user: str
    use_tts: bool
    stream_audio: bool


def _history(user: str) -> list[responders.Turn]:
    rows = ChatExchange.objects.filter(user=user).order_by("-created_at")[:HISTORY_TURNS]
    return [responders.Turn(row.text, row.response) for row in reversed(rows)]


def _save(exchange: ChatExchange) -> ChatExchange:
    exchange.save(force_insert=True)
    return exchange


async def synthesize_wav(text: str, *, endpoint: str) -> tuple[bytes, int]:
    """The whole answer as a WAV file with real sizes, and its duration in ms."""
    synthesis = await open_synthesis(text, voice=None, kind="chat", endpoint=endpoint)
    pcm = bytearray()
    async for chunk in synthesis.pcm():
        pcm += chunk
    fmt = PcmFormat(sample_rate_hz=synthesis.sample_rate_hz)
    return wav_header(fmt, len(pcm)) + bytes(pcm), round(fmt.duration_s(len(pcm)) * 1000)


async def chat_exchange_create(chat: ChatIn) -> ChatExchange:
    """Answer `chat.text`; with use_tts, save its WAV or leave a stream pending for its URL."""
    started = time.perf_counter()
    if chat.use_tts:
        await ensure_engine()  # a 503 must not cost a model call first
    history = await runtime.run_db(_history, chat.user)
    answer, provider = await responders.respond(chat.text, user=chat.user, history=history)
    exchange = ChatExchange(
        request_id=uuid.uuid4().hex,
        user=chat.user,
        text=chat.text,
        response=answer,
        provider_used=provider,
        use_tts=chat.use_tts,
        stream_audio=chat.stream_audio,
    )
    if chat.use_tts and chat.stream_audio:
        exchange.audio_status = AudioStatus.PENDING
        exchange.stream_expires_at = timezone.now() + timedelta(
            seconds=settings.PARLEY_STREAM_TTL_S
        )
    elif chat.use_tts:
        exchange.audio_wav, exchange.duration_ms = await synthesize_wav(answer, endpoint="/chat")
        exchange.audio_status = AudioStatus.READY
    exchange.processing_time = round(time.perf_counter() - started, 4)
    return await runtime.run_db(_save, exchange)


def chat_response(exchange: ChatExchange) -> dict:
    """The seed's response body: both URL keys, the one that does not apply is null."""
    ready = exchange.audio_status == AudioStatus.READY
    streaming = exchange.use_tts and exchange.stream_audio
    return {
        "response": exchange.response,
        "provider_used": exchange.provider_used,
        "processing_time": exchange.processing_time,
        "audio_url": f"/audio/{exchange.request_id}.wav" if ready else None,
        "stream_url": f"/audio/stream/{exchange.request_id}" if streaming else None,
        "request_id": exchange.request_id,
        "current_user": exchange.user,
    }


# --- the stream URL ------------------------------------------------------------------------


def chat_stream_claim(*, request_id: str) -> ChatExchange | None:
    """Take a pending, unexpired stream for this GET (one GET at a time), or None."""
    now = timezone.now()
    claimed = ChatExchange.objects.filter(
        request_id=request_id, audio_status=AudioStatus.PENDING, stream_expires_at__gt=now
    ).update(audio_status=AudioStatus.STREAMING)
    if claimed != 1:
        return None
    return ChatExchange.objects.get(request_id=request_id)


def chat_stream_finish(*, request_id: str, completed: bool) -> None:
    """Streamed to the end: cleaned up, the URL is spent. Cut short: pending again (TTL holds)."""
    status = AudioStatus.STREAMED if completed else AudioStatus.PENDING
    ChatExchange.objects.filter(request_id=request_id, audio_status=AudioStatus.STREAMING).update(
        audio_status=status, streamed_at=timezone.now() if completed else None
    )


async def chat_stream_open(exchange: ChatExchange) -> Synthesis:
    """Start synthesizing a claimed stream's answer; on failure the stream is pending again."""
    try:
        return await open_synthesis(
            exchange.response,
            voice=None,
            kind="chat",
            endpoint=f"/audio/stream/{exchange.request_id}",
            sample_rate=STREAM_ENCODING.sample_rate_hz,
            response_format="wav",
        )
    except BaseException:
        await runtime.run_db(chat_stream_finish, request_id=exchange.request_id, completed=False)
        raise


async def chat_stream_body(exchange: ChatExchange, synthesis: Synthesis) -> AsyncIterator[bytes]:
    """The WAV of the answer in 4 KB pieces as it is synthesized; then the request is spent."""
    completed = False
    try:
        body = encoded(synthesis.pcm(), STREAM_ENCODING)
        async for piece in synthesis.counted(fixed_pieces(body, STREAM_PIECE_BYTES)):
            yield piece
        completed = True
    finally:
        # Shielded: a client that went away cancels this generator, not the bookkeeping.
        await asyncio.shield(
            runtime.run_db(chat_stream_finish, request_id=exchange.request_id, completed=completed)
        )


def chat_audio_file(*, request_id: str) -> bytes | None:
    row = (
        ChatExchange.objects.filter(request_id=request_id, audio_status=AudioStatus.READY)
        .values_list("audio_wav", flat=True)
        .first()
    )
    return bytes(row) if row is not None else None
