"""chunk_ingest_group (WS /ws/audio's group commit, issue 11 §2): a stream's in-order chunks
go through the hot path together, anything else chunk by chunk; either way every chunk is
answered at its place, stored with its offset and playhead, and announced by its own
audio_chunk event, numbered in the order the chunks were sent."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from ingest.session import ack_text
from streams.audio import PcmFormat
from streams.errors import ApiError
from streams.models import Chunk, RoomEvent, Stream
from streams.services import ChunkIn, chunk_ingest, chunk_ingest_group
from tests.conftest import pcm

pytestmark = pytest.mark.django_db(transaction=True)

TENTH = pcm(0.1)  # 4800 bytes


def chunk(room: str, stream_id: str, seq: int, data: bytes = TENTH, **fields) -> ChunkIn:
    return ChunkIn(
        room_name=room,
        speaker=fields.pop("speaker", f"{room}-speaker"),
        stream_id=stream_id,
        seq=seq,
        data=data,
        done=fields.pop("done", False),
        speech_text=fields.pop("speech_text", ""),
        fmt=fields.pop("fmt", PcmFormat()),
    )


def test_a_mixed_group_is_answered_in_order_and_stored_as_chunk_by_chunk_would():
    chunk_ingest(chunk("ra", "a", 0))
    group = [
        chunk("ra", "a", 1),
        chunk("ra", "a", 2),
        chunk("rb", "b", 0),  # a new stream: the general path
        chunk("rb", "b", 1),
        chunk("ra", "a", 3),
        chunk("ra", "a", 5),  # ahead of a gap: buffered, not published
        chunk("ra", "a", 4),  # fills it: publishes 4 and 5
        chunk("ra", "a", 2),  # a retry: duplicate
        chunk("ra", "a", 3, data=pcm(0.05)),  # same seq, other bytes: refused
        chunk("ra", "a", 6, fmt=PcmFormat(sample_rate_hz=16000)),  # refused
        chunk("ra", "a", 6),
        chunk("ra", "a", 7, speech_text="hi"),  # not the hot path's
        chunk("ra", "a", 8),
        chunk("rb", "b", 2, done=True),
    ]
    answers = chunk_ingest_group(group)

    assert len(answers) == len(group)
    for sent, answer in zip(group, answers, strict=True):
        if isinstance(answer, dict):
            assert (answer["stream_id"], answer["seq"]) == (sent.stream_id, sent.seq)
    codes = [a.code if isinstance(a, ApiError) else None for a in answers]
    assert codes == [None] * 8 + ["chunk_conflict", "format_changed"] + [None] * 4
    assert [a["received_chunks"] for a in answers[:2]] == [2, 3]
    assert answers[7]["duplicate"] is True
    assert answers[12]["received_chunks"] == 9 and answers[12]["received_bytes"] == 9 * 4800
    assert answers[13]["done"] is True

    for stream_id, room, count in (("a", "ra", 9), ("b", "rb", 3)):
        stream = Stream.objects.get(stream_id=stream_id)
        chunks = list(Chunk.objects.filter(stream=stream).order_by("seq"))
        assert [c.seq for c in chunks] == list(range(count))
        assert [c.offset_bytes for c in chunks] == [4800 * i for i in range(count)]
        # Each on the playhead after the one before (later if the listener ran dry while a
        # slow machine took more than 0.1 s between two commits), never overlapping.
        starts = [c.play_start_at for c in chunks]
        assert all((b - a).total_seconds() >= 0.1 - 0.001 for a, b in pairwise(starts))
        assert (stream.chunk_count, stream.next_emit_seq, stream.total_bytes) == (
            count,
            count,
            count * 4800,
        )
        # One event per chunk, numbered in seq order with no hole, each naming its chunk.
        events = list(RoomEvent.objects.filter(room__name=room, type="audio_chunk").order_by("seq"))
        assert [e.payload["seq"] for e in events] == list(range(count))
        assert [e.chunk_id for e in events] == [c.pk for c in chunks]
        assert [e.payload["offset_ms"] for e in events] == [100 * i for i in range(count)]
        all_ids = list(RoomEvent.objects.filter(room__name=room).values_list("seq", flat=True))
        assert sorted(all_ids) == list(range(min(all_ids), max(all_ids) + 1))


def test_a_long_run_is_one_group_and_a_later_group_continues_it():
    chunk_ingest(chunk("rl", "long", 0))
    first = chunk_ingest_group([chunk("rl", "long", seq) for seq in range(1, 41)])
    second = chunk_ingest_group([chunk("rl", "long", seq) for seq in range(41, 64)])
    answers = first + second
    assert [a["seq"] for a in answers] == list(range(1, 64))
    assert [a["received_chunks"] for a in answers] == list(range(2, 65))
    stored = list(Chunk.objects.filter(stream__stream_id="long").order_by("seq"))
    assert [bytes(c.data) for c in stored] == [TENTH] * 64  # the bytes as sent
    # One run, one clock reading: its chunks follow each other exactly on the playhead.
    run = [c.play_start_at for c in stored[1:41]]
    assert all((b - a).total_seconds() == pytest.approx(0.1, abs=0.001) for a, b in pairwise(run))
    events = RoomEvent.objects.filter(room__name="rl", type="audio_chunk").order_by("seq")
    assert [e.payload["seq"] for e in events] == list(range(64))


def test_the_hot_ack_text_is_the_ack_as_json():
    hot = {
        "stream_id": "s-1.a:b",
        "seq": 7,
        "duplicate": False,
        "received_bytes": 9600,
        "received_chunks": 2,
        "done": False,
        "status": "streaming",
    }
    final = {**hot, "done": True, "status": "playing", "duration_ms": 200}
    for answer in (hot, final, {**hot, "duplicate": True}):
        assert json.loads(ack_text(answer)) == {"type": "ack", **answer}
