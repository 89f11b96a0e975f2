"""Predicted end, the release protocol and the other clock-driven transitions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, transaction
from django.utils import timezone

from streams import services
from streams.models import Chunk, RoomEvent, Stream, Turn, Utterance
from streams.scheduler import sweep_once
from tests.conftest import pcm

pytestmark = pytest.mark.django_db(transaction=True)
TENTH = pcm(0.1)


def events(room: str = "r1") -> list[tuple[str, dict]]:
    return [
        (event.type, event.payload)
        for event in RoomEvent.objects.filter(room__name=room).order_by("seq")
    ]


def make_due(turn: Turn) -> None:
    Turn.objects.filter(pk=turn.pk).update(release_at=timezone.now() - timedelta(milliseconds=1))


def test_release_emits_the_seed_events_in_order(post_chunk):
    post_chunk(seq=0, data=TENTH)
    post_chunk(seq=1, data=TENTH, done=True, speech_text="Hi all.")
    turn = Turn.objects.get()
    assert services.turn_release(turn_id=turn.pk) is False  # not yet: playback is on
    make_due(turn)
    assert services.turn_release(turn_id=turn.pk) is True
    tail = [(kind, payload.get("name")) for kind, payload in events()[-6:]]
    assert tail == [
        ("playback_done", None),
        ("speech", None),
        ("input", "SpeechFinished"),
        ("input", "AudioEnded"),
        ("turn", None),
        ("state", None),
    ]
    done = dict(events())["playback_done"]
    assert done == {
        "stream_id": "s1",
        "speaker": "alice",
        "turn_id": str(turn.pk),
        "duration_ms": 200,
        "bytes": 9600,
    }
    assert dict(events())["speech"]["text"] == "Hi all."
    turn.refresh_from_db()
    assert (turn.status, turn.reason) == ("released", "played")
    assert Stream.objects.get().status == "played"


def test_release_happens_exactly_once(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True)
    turn = Turn.objects.get()
    make_due(turn)
    results = [services.turn_release(turn_id=turn.pk) for _ in range(3)]
    results.append(bool(sweep_once()))
    assert results[:3] == [True, False, False]
    assert [kind for kind, _ in events()].count("playback_done") == 1


def test_text_is_published_at_playback_end_not_before(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True, speech_text="Later.")
    utterance = Utterance.objects.get()
    assert utterance.published_at is None
    assert "speech" not in [kind for kind, _ in events()]
    make_due(Turn.objects.get())
    sweep_once()
    utterance.refresh_from_db()
    assert utterance.published_at is not None
    assert utterance.heard_ms == 100


def test_no_text_means_no_speech_event(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True)
    make_due(Turn.objects.get())
    sweep_once()
    assert "speech" not in [kind for kind, _ in events()]
    assert [p["name"] for k, p in events() if k == "input"] == ["SpeechFinished", "AudioEnded"]


def test_a_prepared_release_commits_at_its_moment_never_before(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True, speech_text="On time.")
    turn = Turn.objects.get()
    moment = timezone.now() + timedelta(milliseconds=40)
    Turn.objects.filter(pk=turn.pk).update(release_at=moment)
    plan = services.release_prepare(turn_id=turn.pk)
    assert plan is not None and plan.release_at == moment and plan.speech_text == "On time."
    assert Turn.objects.get().status == "finalized", "preparing writes nothing"
    assert services.release_commit(plan=plan) is True  # called early: waits for the moment
    turn.refresh_from_db()
    assert turn.status == "released" and turn.ended_at >= moment
    done = RoomEvent.objects.get(type="playback_done")
    assert done.created_at >= moment
    assert Utterance.objects.get().published_at == turn.ended_at
    state = RoomEvent.objects.filter(type="state").last()
    assert state.payload == {
        "speaker": None,
        "turn": None,
        "stream": None,
        "spectators": 0,
        "last_event_id": state.seq,
    }
    assert services.release_commit(plan=plan) is False, "exactly once"
    assert services.release_prepare(turn_id=turn.pk) is None


def test_a_plan_overtaken_by_a_moderator_releases_nothing(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True)
    turn = Turn.objects.get()
    make_due(turn)
    plan = services.release_prepare(turn_id=turn.pk)
    services.floor_yield(room_name="r1", speaker=None, force=True)
    before = RoomEvent.objects.count()
    assert services.release_commit(plan=plan) is False
    assert RoomEvent.objects.count() == before
    assert Turn.objects.get().status == "interrupted"


def test_zero_bytes_releases_on_the_request_path(post_chunk):
    response = post_chunk(seq=0, done=True, speech_text="(nods)")
    body = response.json()
    assert body["duration_ms"] == 0
    assert body["status"] == "played"
    assert Turn.objects.get().status == "released"
    kinds = [kind for kind, _ in events()]
    assert kinds[-6:] == ["playback_done", "speech", "input", "input", "turn", "state"]


def test_predicted_end_is_first_arrival_plus_duration_for_a_fast_producer(post_chunk):
    for seq in range(5):
        post_chunk(seq=seq, data=TENTH)
    body = post_chunk(seq=5, data=TENTH, done=True).json()
    stream = Stream.objects.get()
    expected = stream.first_arrival_at + timedelta(seconds=0.6)
    # The requests themselves take a few ms each; the end cannot be earlier than this.
    assert abs((stream.playback_ends_at - expected).total_seconds()) < 0.05
    assert body["playback_ends_at"] == stream.playback_ends_at.isoformat().replace("+00:00", "Z")


def test_slow_producer_underrun_moves_the_end(post_chunk):
    post_chunk(seq=0, data=TENTH)
    stream = Stream.objects.get()
    # Pretend the first chunk arrived (and played) 10 s ago: the listener heard silence since.
    Stream.objects.filter(pk=stream.pk).update(
        playhead_at=stream.playhead_at - timedelta(seconds=10)
    )
    before = timezone.now()
    post_chunk(seq=1, data=TENTH, done=True)
    stream.refresh_from_db()
    assert stream.playback_ends_at >= before + timedelta(seconds=0.1)


def test_playback_speed_shortens_the_duration(post_chunk):
    body = post_chunk(seq=0, data=pcm(1.0), playback_speed=2.0, done=True).json()
    assert body["duration_ms"] == 500


def test_gap_waits_then_finalizes_with_what_arrived(post_chunk, settings):
    post_chunk(seq=0, data=TENTH)
    body = post_chunk(seq=2, data=TENTH, done=True).json()
    assert body["status"] == "awaiting_gaps"
    assert body["missing_seqs"] == [1]
    stream = Stream.objects.get()
    assert stream.gap_deadline > timezone.now() + timedelta(seconds=4)
    assert services.stream_finalize_after_gap(stream_id="s1") is False
    Stream.objects.filter(pk=stream.pk).update(gap_deadline=timezone.now())
    sweep_once()
    stream.refresh_from_db()
    assert stream.status == "playing"
    assert (stream.missing_ranges, stream.missing_count) == ([[1, 1]], 1)
    chunk_seqs = [p["seq"] for k, p in events() if k == "audio_chunk"]
    assert chunk_seqs == [0, 2]


def test_gap_filled_in_time_finalizes_normally(post_chunk):
    post_chunk(seq=0, data=TENTH)
    post_chunk(seq=2, data=TENTH, done=True)
    body = post_chunk(seq=1, data=TENTH).json()
    assert body["status"] == "playing"
    assert body["duration_ms"] == 300
    assert [p["seq"] for k, p in events() if k == "audio_chunk"] == [0, 1, 2]
    assert (Stream.objects.get().missing_ranges, Stream.objects.get().missing_count) == ([], 0)


def test_a_silent_claim_expires_after_the_lease(client):
    client.post("/api/rooms/r1/floor", {"speaker": "alice"}, "application/json")
    turn = Turn.objects.get()
    assert turn.lease_expires_at == turn.claimed_at + timedelta(seconds=30)
    sweep_once()
    assert Turn.objects.get().status == "claimed"
    Turn.objects.update(lease_expires_at=timezone.now())
    sweep_once()
    turn.refresh_from_db()
    assert (turn.status, turn.reason) == ("expired", "lease_expired")
    assert events()[-2][0] == "turn" and events()[-2][1]["status"] == "expired"


def test_chunks_renew_the_lease(post_chunk):
    post_chunk(seq=0, data=TENTH)
    first = Turn.objects.get().lease_expires_at
    post_chunk(seq=1, data=TENTH)
    # Renewed at most once a second: a chunk right after another leaves it alone.
    assert Turn.objects.get().lease_expires_at == first
    Turn.objects.update(lease_expires_at=first - timedelta(seconds=5))
    post_chunk(seq=2, data=TENTH)
    assert Turn.objects.get().lease_expires_at > first


def test_expired_stream_is_interrupted_with_what_was_heard(post_chunk):
    second = pcm(1.0)
    post_chunk(seq=0, data=second)
    post_chunk(seq=1, data=second)
    # The first chunk started playing 1.5 s ago, the second right after it.
    before = timezone.now()
    start = before - timedelta(milliseconds=1500)
    Chunk.objects.filter(seq=0).update(play_start_at=start)
    Chunk.objects.filter(seq=1).update(play_start_at=start + timedelta(seconds=1))
    Turn.objects.update(lease_expires_at=timezone.now())
    sweep_once()
    # However slow the machine between `before` and the sweep's own clock reading.
    elapsed_ms = (timezone.now() - before).total_seconds() * 1000
    stream = Stream.objects.get()
    assert stream.status == "interrupted"
    assert 1500 <= stream.heard_ms <= min(2000, 1500 + elapsed_ms + 1)


def test_the_database_allows_one_active_turn_per_room():
    turn, _ = services.floor_claim(room_name="r1", speaker="alice")
    with pytest.raises(IntegrityError), transaction.atomic():
        Turn.objects.create(
            room=turn.room, speaker="bob", status="finalized", claimed_at=timezone.now()
        )
    Turn.objects.create(room=turn.room, speaker="bob", status="released", claimed_at=timezone.now())


def test_sweep_reports_upcoming_work_for_timers(post_chunk):
    post_chunk(seq=0, data=pcm(0.5), done=True)
    upcoming = sweep_once(horizon_s=2)
    assert ("release", str(Turn.objects.get().pk)) in [(k, key) for k, key, _ in upcoming]
