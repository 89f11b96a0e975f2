"""The admin shows what was sent and can cut a speaker off."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from streams.models import Stream, Turn
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
