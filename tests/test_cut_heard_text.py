"""A stream cut off publishes only what was heard, and keeps its whole text as the script.

Issue 10 §5: after `DELETE …/floor?force=1` the stream kept its whole `speech_text` and no
`speech` event was sent. The heard part comes from the stream's word marks (Parley's own TTS)
or the heard fraction of its audio (streams/heard.py).
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from streams import services
from streams.heard import heard_prefix
from streams.models import Chunk, RoomEvent, Stream, Turn, Utterance
from tests.conftest import pcm

pytestmark = pytest.mark.django_db(transaction=True)

TEXT = "one two three four five six seven eight nine ten"
RATE_BYTES = 24000 * 2  # the default format: 24 kHz, 16-bit mono


def speech_events(room: str = "r1") -> list[dict]:
    return [
        event.payload
        for event in RoomEvent.objects.filter(room__name=room, type="speech").order_by("seq")
    ]


# --- the pure part ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.0, ""),
        (0.01, "one"),  # the first word has started playing
        (0.5, "one two three four five"),
        (0.99, TEXT),
        (1.0, TEXT),
    ],
)
def test_a_finished_stream_is_cut_by_its_heard_fraction(fraction, expected):
    audio = 10 * RATE_BYTES
    heard = heard_prefix(
        TEXT,
        heard_bytes=int(audio * fraction),
        audio_bytes=audio,
        complete=True,
        bytes_per_second=RATE_BYTES,
    )
    assert heard == expected


def test_word_marks_decide_exactly():
    # "one" at 0 s, "two" at 1 s, "three" at 4 s (a long pause), "four" at 5 s.
    marks = [(0, 0), (4, RATE_BYTES), (8, 4 * RATE_BYTES), (14, 5 * RATE_BYTES)]
    text = "one two three four"
    kwargs = {"audio_bytes": 6 * RATE_BYTES, "complete": True, "bytes_per_second": RATE_BYTES}
    # Proportionally 3.5 s of 6 s would be more than half the text; the marks say two words.
    assert heard_prefix(text, heard_bytes=int(3.5 * RATE_BYTES), words=marks, **kwargs) == (
        "one two"
    )
    assert heard_prefix(text, heard_bytes=4 * RATE_BYTES + 2, words=marks, **kwargs) == (
        "one two three"
    )


def test_a_stream_still_arriving_does_not_count_its_unsent_words():
    # 1 s of audio arrived for a 48-character text (~3.2 s at 15 characters a second): all of
    # that second heard is about a third of the text, not all of it.
    heard = heard_prefix(
        TEXT,
        heard_bytes=RATE_BYTES,
        audio_bytes=RATE_BYTES,
        complete=False,
        bytes_per_second=RATE_BYTES,
    )
    assert heard and TEXT.startswith(heard) and len(heard) < len(TEXT) / 2


# --- the core ---------------------------------------------------------------------------------


def test_a_forced_cut_publishes_the_heard_words_and_keeps_the_script(post_chunk):
    post_chunk(seq=0, data=pcm(10.0), done=True, speech_text=TEXT)
    turn = services.floor_yield(room_name="r1", speaker=None, force=True, heard_ms=5000)
    assert (turn.status, turn.reason) == ("interrupted", "forced")
    stream = Stream.objects.get()
    assert stream.heard_ms == 5000
    assert stream.speech_text == "one two three four five"
    assert stream.script == TEXT
    utterance = Utterance.objects.get()
    assert (utterance.text, utterance.script) == ("one two three four five", TEXT)
    [speech] = speech_events()
    assert speech["text"] == "one two three four five"
    assert speech["interrupted"] is True and speech["heard_ms"] == 5000
    # The speech event comes before the turn event, as at a release.
    kinds = list(RoomEvent.objects.order_by("seq").values_list("type", flat=True))
    assert kinds[-3:] == ["speech", "turn", "state"]


def test_a_cut_before_anything_was_heard_says_nothing(post_chunk):
    post_chunk(seq=0, data=pcm(10.0), done=True, speech_text=TEXT)
    services.floor_yield(room_name="r1", speaker=None, force=True, heard_ms=0)
    stream = Stream.objects.get()
    assert (stream.speech_text, stream.script) == ("", TEXT)
    assert speech_events() == []


def test_a_played_stream_keeps_text_and_script_equal(post_chunk, client: Client):
    post_chunk(seq=0, data=pcm(0.05), done=True, speech_text=TEXT)
    turn = Turn.objects.get()
    Turn.objects.filter(pk=turn.pk).update(release_at=timezone.now() - timedelta(milliseconds=1))
    assert services.turn_release(turn_id=turn.pk)
    body = client.get("/api/streams/s1").json()
    assert body["speech_text"] == body["script"] == TEXT
    assert Utterance.objects.get().script == TEXT
    assert speech_events()[-1] == {"stream_id": "s1", "speaker": "alice", "text": TEXT}


def test_the_api_shows_both_once_cut_and_neither_before(post_chunk, client: Client):
    post_chunk(seq=0, data=pcm(20.0), done=True, speech_text=TEXT)
    before = client.get("/api/streams/s1").json()
    assert before["speech_text"] is None and before["script"] is None
    time.sleep(0.3)
    response = client.delete("/api/rooms/r1/floor?force=1")
    assert response.status_code == 200
    body = client.get("/api/streams/s1").json()
    assert body["script"] == TEXT
    # At least 0.3 s of 20 s was heard and (however slow this machine) far from all of it.
    assert body["speech_text"] and TEXT.startswith(body["speech_text"])
    assert len(body["speech_text"]) < len(TEXT)
    [speech] = speech_events()
    assert speech["text"] == body["speech_text"] and speech["interrupted"] is True


def test_a_lease_expiry_mid_stream_publishes_what_was_heard(post_chunk):
    post_chunk(seq=0, data=pcm(1.0), speech_text=TEXT)  # never finished
    # The second that arrived started playing 5 s ago: all of it has been heard.
    Chunk.objects.update(play_start_at=timezone.now() - timedelta(seconds=5))
    Turn.objects.update(lease_expires_at=timezone.now())
    assert services.turn_expire(turn_id=Turn.objects.get().pk)
    stream = Stream.objects.get()
    assert stream.status == "interrupted" and stream.script == TEXT
    assert stream.heard_ms == 1000
    # One second heard of a text that takes about three: the first few words, not all.
    assert stream.speech_text and TEXT.startswith(stream.speech_text)
    assert len(stream.speech_text) < len(TEXT) / 2
    assert speech_events()[-1]["text"] == stream.speech_text


def test_the_admin_lists_the_unsaid_rest(post_chunk, admin_client):
    post_chunk(seq=0, data=pcm(10.0), done=True, speech_text=TEXT)
    services.floor_yield(room_name="r1", speaker=None, force=True, heard_ms=5000)
    page = admin_client.get("/admin/streams/utterance/").content.decode()
    assert "six seven eight nine ten" in page
