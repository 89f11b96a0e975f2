"""streaming_strategy "adaptive": a small first piece, then pieces that grow to chunk_size
(speech/tts/text.py), and the API speaking with it."""

from __future__ import annotations

import random

import httpx
import pytest

from config.asgi import application
from speech.tts.text import (
    ADAPTIVE_FIRST_CHARS,
    split_segments,
    split_spans,
    split_text,
)
from tests.speech.audio import decoded_seconds
from tests.tts.test_text import SAMPLE, assert_valid_spans, random_text

PROSE = (
    "The committee met on a grey Tuesday morning to review the plans for the new harbour. "
    "Everyone agreed that the old pier could not survive another winter of storms, yet nobody "
    "wanted to pay for the repairs. After an hour of polite argument, the chairwoman proposed "
    "a compromise: the town would borrow half the money, and the fishermen would raise the "
    "rest with a summer festival. Surprisingly, the motion passed without a single objection! "
)


def test_the_first_piece_is_a_clause_and_later_pieces_grow_to_the_chunk_size():
    text = PROSE * 3
    pieces = split_text(text, "adaptive", 200)
    # The first sentence (84 characters) is too long for the first piece: its first words.
    assert pieces[0] == "The committee met on a grey Tuesday"
    assert len(pieces[0]) <= ADAPTIVE_FIRST_CHARS
    # Each piece at most twice its budget's predecessor: 40, 80, 160, then 200.
    budgets = [40, 80, 160] + [200] * (len(pieces) - 3)
    assert all(len(p) <= b for p, b in zip(pieces, budgets, strict=True)), pieces
    # Later pieces are whole sentences packed to the chunk size, as "sentence" does.
    later = pieces[4:]
    assert all(p.endswith((".", "!")) for p in later), later
    assert max(len(p) for p in later) > 160
    # Fewer, larger pieces than cutting at every budget would give; not many more than
    # "sentence" gives.
    assert len(pieces) <= len(split_text(text, "sentence", 200)) + 3


def test_a_first_clause_is_preferred_to_words():
    text = "Well, that is a question nobody in this room expected to hear today. Then more."
    assert split_text(text, "adaptive", 200)[0] == "Well,"
    text = "Yes. " + PROSE
    assert split_text(text, "adaptive", 200)[0] == "Yes."


def test_a_short_text_is_one_piece_and_small_chunk_sizes_cap_the_first():
    assert split_text("Hello there.", "adaptive", 200) == ["Hello there."]
    pieces = split_text(PROSE, "adaptive", 30)
    assert all(len(p) <= 30 for p in pieces)
    # Below the first budget there is no ramp: the same pieces as "paragraph" at that size.
    assert pieces == split_text(PROSE, "paragraph", 30)


def test_once_grown_pieces_pack_whole_paragraphs_up_to_the_chunk_size():
    paragraph = "A short paragraph that ends here."
    text = f"{PROSE}\n\n{paragraph}\n\n{paragraph}"
    pieces = split_text(text, "adaptive", 500)
    assert all(len(p) <= b for p, b in zip(pieces, (40, 80, 160, 320, 500), strict=False))
    # The rest of the first paragraph and both short ones fit 500: one piece, as the
    # paragraph rules pack it.
    assert pieces[-1].endswith(f"{paragraph}\n\n{paragraph}") and len(pieces[-1]) > 200


@pytest.mark.parametrize("chunk_size", [1, 7, 50, 200, 500])
def test_adaptive_keeps_the_splitter_invariants(chunk_size):
    rng = random.Random(f"adaptive-{chunk_size}")
    for _ in range(40):
        text = random_text(rng)
        assert_valid_spans(text, split_spans(text, "adaptive", chunk_size), chunk_size)
    assert_valid_spans(SAMPLE, split_spans(SAMPLE, "adaptive", chunk_size), chunk_size)


def test_split_segments_continues_the_ramp_across_texts():
    texts = ["Hi.", PROSE, PROSE]
    split = split_segments(texts, "adaptive", 200)
    for text, spans in zip(texts, split, strict=True):
        assert_valid_spans(text, spans, 200)
    assert [s.text for s in split[0]] == ["Hi."]
    # The second text goes on at the second budget (80), not at 40 again.
    assert len(split[1][0].text) > ADAPTIVE_FIRST_CHARS
    assert len(split[1][0].text) <= 80
    # The third starts fully grown: the same pieces as the paragraph rules.
    assert [s.text for s in split[2]] == split_text(PROSE, "paragraph", 200)
    # Other strategies: each text on its own.
    each = [split_spans(text, "sentence", 200) for text in texts]
    assert split_segments(texts, "sentence", 200) == each
    with pytest.raises(ValueError):
        split_segments(texts, "nope", 200)


def test_long_text_is_split_in_linear_time():
    import time

    text = "word " * 20_000  # 100,000 characters without punctuation: the worst case
    start = time.perf_counter()
    pieces = split_spans(text, "adaptive", 500)
    assert time.perf_counter() - start < 5  # a few passes, not one per piece
    assert len(pieces[0].text) <= ADAPTIVE_FIRST_CHARS and len(pieces) > 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("drain_recorders")
async def test_the_api_speaks_adaptive_pieces_and_records_them():
    text = PROSE * 2
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        bodies = {}
        for strategy in ("sentence", "adaptive"):
            response = await client.post(
                "/v1/audio/speech",
                json={"input": text, "response_format": "pcm", "streaming_strategy": strategy},
            )
            assert response.status_code == 200, response.text
            job = await client.get(f"/v1/status/progress/{response.headers['x-speech-job-id']}")
            bodies[strategy] = (response.content, job.json())
        refused = await client.post(
            "/v1/audio/speech", json={"input": "Hi.", "streaming_strategy": "growing"}
        )
    assert refused.status_code == 422
    assert "adaptive" in refused.json()["error"]["message"]
    sentence, adaptive = (decoded_seconds(bodies[s][0], "pcm") for s in ("sentence", "adaptive"))
    # The same speech, cut differently: durations within the pauses of a few more pieces.
    assert abs(adaptive - sentence) < 2.0, (adaptive, sentence)
    assert bodies["adaptive"][1]["total_chunks"] == len(split_spans(text, "adaptive", 200))
    assert bodies["adaptive"][1]["total_chunks"] > bodies["sentence"][1]["total_chunks"]
