"""The admin shows what was sent and can cut a speaker off."""

from __future__ import annotations

import re
import time

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from recordings import services as recording_services
from recordings.formats import parse_format
from speech.models import SpeechJob
from streams import services
from streams.models import Room, RoomEvent, Stream, Turn
from tests.conftest import pcm

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client):
    get_user_model().objects.create_superuser("boss", "", "pw-boss-123")
    assert client.login(username="boss", password="pw-boss-123")
    return client


def test_a_stream_just_sent_is_in_the_admin_with_a_player(admin_client, post_chunk):
    post_chunk(seq=0, data=pcm(0.1))
    post_chunk(seq=2, data=pcm(0.1))
    listing = admin_client.get("/admin/streams/stream/").content.decode()
    assert "s1" in listing and "0.20 s" in listing
    stream = Stream.objects.get()
    page = admin_client.get(f"/admin/streams/stream/{stream.pk}/change/").content.decode()
    assert '<audio controls preload="none" src="/api/streams/s1/audio.wav">' in page
    assert ">1<" in page or "1</div>" in page  # missing seq 1 shown
    for model in ("room", "turn", "chunk", "utterance", "roomevent", "apikey"):
        assert admin_client.get(f"/admin/streams/{model}/").status_code == 200


def test_admin_filters_by_room_speaker_status_and_date(admin_client, post_chunk):
    post_chunk(seq=0, data=pcm(0.1))
    for query in (
        "room__id__exact=1",
        "speaker=alice",
        "status__exact=streaming",
        "created_at__gte=2020-01-01T00:00:00%2B00:00",
    ):
        assert admin_client.get(f"/admin/streams/stream/?{query}").status_code == 200


def test_force_release_action(admin_client, post_chunk):
    post_chunk(seq=0, data=pcm(0.1))
    turn = Turn.objects.get()
    response = admin_client.post(
        "/admin/streams/turn/",
        {"action": "force_release", "_selected_action": [str(turn.pk)]},
        follow=True,
    )
    assert "Released 1 turn(s)." in response.content.decode()
    turn.refresh_from_db()
    assert (turn.status, turn.reason) == ("interrupted", "forced")


def test_ensure_admin_creates_the_first_superuser_once(settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    call_command("ensure_admin")
    call_command("ensure_admin")
    assert get_user_model().objects.filter(is_superuser=True).count() == 1
    password = (tmp_path / "admin-password.txt").read_text().strip()
    assert password in capsys.readouterr().out


def _played(post_chunk, *, stream_id: str, speaker: str, text: str) -> Turn:
    """One stream of two 50 ms chunks, played out and released as the clock would."""
    post_chunk(stream_id=stream_id, speaker=speaker, seq=0, data=pcm(0.05))
    post_chunk(
        stream_id=stream_id, speaker=speaker, seq=1, data=pcm(0.05), done=True, speech_text=text
    )
    turn = Turn.objects.get(streams__stream_id=stream_id)
    deadline = time.monotonic() + 10
    while not services.turn_release(turn_id=turn.pk):  # due 100 ms after the final chunk
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return turn


def test_room_timeline_shows_turns_then_streams_with_players_then_events_in_order(
    admin_client, post_chunk
):
    first = _played(post_chunk, stream_id="a-1", speaker="alice", text="Hello there.")
    second = _played(post_chunk, stream_id="b-1", speaker="bob", text="General <Kenobi>.")
    room = Room.objects.get(name="r1")
    listing = admin_client.get("/admin/streams/room/").content.decode()
    timeline_url = f"/admin/streams/room/{room.pk}/timeline/"
    assert f'href="{timeline_url}"' in listing
    assert (
        f'href="{timeline_url}"'
        in admin_client.get(f"/admin/streams/room/{room.pk}/change/").content.decode()
    )

    response = admin_client.get(timeline_url)
    assert response.status_code == 200
    page = response.content.decode()
    # turns in order, each before its stream, each stream with its player
    order = [
        page.index(f'data-turn="{first.pk}"'),
        page.index('data-stream="a-1"'),
        page.index('<audio controls preload="none" src="/api/streams/a-1/audio.wav">'),
        page.index(f'data-turn="{second.pk}"'),
        page.index('data-stream="b-1"'),
        page.index('<audio controls preload="none" src="/api/streams/b-1/audio.wav">'),
    ]
    assert order == sorted(order)
    # every event of the room, once, in order, with a millisecond time
    seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', page)]
    assert seqs == list(RoomEvent.objects.filter(room=room).values_list("seq", flat=True))
    rows = re.findall(r'<tr class="[^"]*event" data-seq="\d+">(.*?)</tr>', page, re.S)
    assert len(rows) == len(seqs)
    for row in rows:
        assert re.search(r">\d\d:\d\d:\d\d\.\d{3}<", row) and re.search(r">\+\d+<", row), row
    # speaker, input name and text of the events; text escaped
    assert re.search(r"<td>alice</td><td>SpeechFinished</td>", page)
    assert "Hello there." in page and "General &lt;Kenobi&gt;." in page
    assert "#1 at 50 ms, 2400 bytes" in page


def test_room_timeline_pages_back_through_a_long_log(admin_client, post_chunk):
    for seq in range(6):
        post_chunk(stream_id="long", seq=seq, data=pcm(0.01))
    room = Room.objects.get(name="r1")
    url = f"/admin/streams/room/{room.pk}/timeline/"
    from streams import timeline

    newest = timeline.room_timeline(room=room, limit=4)
    assert newest.has_older and newest.last_seq == room.last_event_id
    older = timeline.room_timeline(room=room, before=newest.first_seq, limit=4)
    assert older.last_seq == newest.first_seq - 1
    page = admin_client.get(url).content.decode()
    assert "older events" not in page  # 8 events: one page of 500
    assert admin_client.get(f"{url}?before=3").status_code == 200
    assert admin_client.get("/admin/streams/room/999/timeline/").status_code == 404
    assert admin_client.get("/admin/streams/room/x/timeline/").status_code == 404


def test_list_pages_have_lazy_players_and_short_columns(
    admin_client, post_chunk, settings, tmp_path
):
    post_chunk(stream_id="a-very-long-stream-id-that-would-widen-the-table", seq=0, data=pcm(0.1))
    listing = admin_client.get("/admin/streams/stream/").content.decode()
    assert (
        '<audio controls preload="none" '
        'src="/api/streams/a-very-long-stream-id-that-would-widen-the-table/audio.wav"'
    ) in listing
    assert ">a-very-long-stream-id-t…<" in listing
    turn = Turn.objects.get()
    turns = admin_client.get("/admin/streams/turn/").content.decode()
    assert f'<code title="{turn.pk}">{str(turn.pk)[:8]}</code>' in turns

    settings.PARLEY_RECORDINGS_DIR = tmp_path
    recording, _ = recording_services.recording_open(
        sid="rec1", transport="websocket", fmt=parse_format({}), base_url="http://t", speaker="e"
    )
    recording_services.recording_chunk_add(recording_id=recording.pk, data=pcm(0.1))
    recording_services.recording_stop(recording_id=recording.pk)
    recordings = admin_client.get("/admin/recordings/recording/").content.decode()
    assert '<audio controls preload="none" src="/static/audio/rec1.wav"' in recordings

    SpeechJob.objects.create(
        text="x" * 500, engine="espeak", sample_rate=24000, created_at=timezone.now()
    )
    jobs = admin_client.get("/admin/speech/speechjob/").content.decode()
    assert ">" + "x" * 39 + "…</span>" in jobs  # the whole text only on hover (title)
    for url in ("/admin/agents/agentsession/", "/admin/agents/exchange/", "/admin/speech/voice/"):
        assert admin_client.get(url).status_code == 200
    for url in ("/admin/streams/utterance/", "/admin/streams/roomevent/"):
        assert admin_client.get(url).status_code == 200
