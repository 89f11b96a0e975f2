"""Every chunk row carries its stream's room, whichever path wrote it (docs/scaling.md)."""

from __future__ import annotations

import pytest
from django.db.models import F

from streams.audio import PcmFormat
from streams.models import Chunk
from streams.services import ChunkIn, chunk_ingest_group
from tests.conftest import pcm

pytestmark = pytest.mark.django_db(transaction=True)


def test_chunks_of_every_path_carry_their_streams_room(post_chunk):
    # POST /audio: the general path (first chunk), the hot path, a gap filled later, the final.
    post_chunk(seq=0, data=pcm(0.1))
    post_chunk(seq=1, data=pcm(0.1))
    post_chunk(seq=3, data=pcm(0.1))
    post_chunk(seq=2, data=pcm(0.1))
    post_chunk(seq=4, data=pcm(0.1), done=True, speech_text="Hello.")
    # Group commit (WS /ws/audio): a run of in-order chunks in one statement, in two rooms.
    fmt = PcmFormat()
    group = [
        ChunkIn(room, "bob", f"{room}-s", seq, pcm(0.02), False, "", fmt)
        for room in ("r2", "r3")
        for seq in range(4)
    ]
    answers = chunk_ingest_group(group)
    assert all(isinstance(answer, dict) for answer in answers), answers
    assert Chunk.objects.count() == 13
    assert not Chunk.objects.exclude(room_id=F("stream__room_id")).exists()
    assert set(Chunk.objects.values_list("room__name", flat=True)) == {"r1", "r2", "r3"}
