"""POST /api/rooms/{room}/say: text becomes a speaker's turn in a room, through POST /audio's path.

The first chunk is synthesized (so a bad voice or a missing engine is refused before the room
sees anything), then the floor is claimed (409 floor_held), then every synthesized piece goes
through `streams.services.chunk_ingest` exactly as a POSTed chunk would: stored, numbered,
broadcast to spectators as `audio_chunk` while the engine is still speaking. The last piece
carries `done` and the text, so the server's clock releases the turn at the predicted end.

The answer comes once synthesis is done (playback is still going on: the engines are much
faster than real time), with the stream id, the turn, the duration and `playback_ends_at`.
Once started, the speech is not tied to the HTTP client: if it disconnects, synthesis
carries on into the room.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from chat.encoding import fixed_pieces
from chat.synthesis import Synthesis, open_synthesis
from streams import selectors, services
from streams.audio import PcmFormat
from streams.errors import ApiError, Conflict
from streams.events import iso
from streams.models import Stream, TurnStatus
from streams.runtime import runtime

logger = logging.getLogger(__name__)
# Speech still going on when its HTTP client left: kept referenced until it finishes.
_background: set[asyncio.Task] = set()


@dataclass(frozen=True)
class SayIn:
    room: str
    speaker: str
    text: str
    voice: str | None = None
    speed: float = 1.0
    stream_id: str | None = None
    chunk_ms: int = 200


def _say_result(stream_id: str) -> dict[str, Any]:
    stream = Stream.objects.select_related("turn").get(stream_id=stream_id)
    return {
        "stream_id": stream.stream_id,
        "room": stream.room.name,
        "speaker": stream.speaker,
        "turn": selectors.turn_as_dict(stream.turn),
        "status": stream.status,
        "duration_ms": stream.duration_ms,
        "playback_ends_at": iso(stream.playback_ends_at),
        "chunks": stream.chunk_count,
        "bytes": stream.total_bytes,
        "sample_rate_hz": stream.sample_rate_hz,
        "text": stream.speech_text,
    }


def _finished(task: asyncio.Task) -> None:
    _background.discard(task)
    # Retrieved here too, for speech whose HTTP client left before it ended.
    if not task.cancelled() and (error := task.exception()) is not None:
        logger.info("say into a room ended early: %r", error)


def _give_up(room: str, speaker: str) -> None:
    """Synthesis failed or was cut: end the turn (interrupting what was already sent)."""
    with contextlib.suppress(ApiError):
        services.floor_yield(room_name=room, speaker=speaker, force=False)


async def _speak(say: SayIn, synthesis: Synthesis, stream_id: str) -> dict[str, Any]:
    fmt = PcmFormat(sample_rate_hz=synthesis.sample_rate_hz)
    piece_bytes = max(fmt.frame_bytes, fmt.bytes_for(say.chunk_ms / 1000))

    sent_words = 0

    def chunk(seq: int, data: bytes, *, done: bool) -> services.ChunkIn:
        # The text goes with the first chunk and the word marks as they are known, so a cut
        # (a moderator's, or a failed synthesis) publishes exactly the words that played;
        # the core publishes the text only when playback ends or is cut.
        nonlocal sent_words
        words = tuple(synthesis.words[sent_words:])
        sent_words = len(synthesis.words)
        return services.ChunkIn(
            room_name=say.room,
            speaker=say.speaker,
            stream_id=stream_id,
            seq=seq,
            data=data,
            done=done,
            speech_text=say.text if seq == 0 or done else "",
            fmt=fmt,
            words=words,
        )

    seq = 0
    held: bytes | None = None  # one piece held back, so the last one can carry `done`
    try:
        pieces = fixed_pieces(synthesis.pcm(), piece_bytes)
        async with contextlib.aclosing(pieces):
            async for piece in pieces:
                if held is not None:
                    await runtime.run_db(services.chunk_ingest, chunk(seq, held, done=False))
                    synthesis.note_sent(len(held))
                    seq += 1
                held = piece
        # No audio at all (nothing speakable) still ends the turn properly: the no-audio mode.
        await runtime.run_db(services.chunk_ingest, chunk(seq, held or b"", done=True))
        synthesis.note_sent(len(held or b""))
    except BaseException:
        await asyncio.shield(runtime.run_db(_give_up, say.room, say.speaker))
        raise
    return await runtime.run_db(_say_result, stream_id)


def _claim_floor(say: SayIn, stream_id: str) -> None:
    """Claim the floor (or find the speaker's own fresh claim) before anything is synthesized."""
    if Stream.objects.filter(stream_id=stream_id).exists():
        raise Conflict(
            "stream_id_conflict",
            f"stream_id {stream_id!r} is already used; leave it out to get a fresh one.",
            field="stream_id",
        )
    turn, _ = services.floor_claim(room_name=say.room, speaker=say.speaker)
    if turn.status != TurnStatus.CLAIMED or Stream.objects.filter(turn=turn).exists():
        raise Conflict(
            "floor_busy",
            f"Speaker {say.speaker!r} is still playing a stream in this turn; say the next "
            "text after it is released.",
            holder=turn.speaker,
            turn_id=str(turn.id),
            expected_release_at=iso(turn.release_at),
        )


async def room_say(say: SayIn) -> dict[str, Any]:
    """Speak `say.text` into the room as `say.speaker`'s turn; see the module docstring."""
    services.validate_room_name(say.room)
    services.validate_speaker(say.speaker)
    stream_id = services.validate_stream_id(say.stream_id or f"say-{uuid.uuid4().hex}")
    # The first chunk is synthesized before the floor is claimed: a bad voice or a missing
    # engine is refused without spectators ever seeing a turn.
    synthesis = await open_synthesis(
        say.text,
        voice=say.voice,
        speed=say.speed,
        kind="say",
        endpoint=f"/api/rooms/{say.room}/say",
    )
    try:
        await runtime.run_db(_claim_floor, say, stream_id)
    except BaseException:
        await synthesis.aclose()
        raise
    task = asyncio.ensure_future(_speak(say, synthesis, stream_id))
    _background.add(task)
    task.add_done_callback(_finished)
    result = await asyncio.shield(task)
    result["engine"] = synthesis.engine
    result["voice"] = synthesis.voice
    return result
