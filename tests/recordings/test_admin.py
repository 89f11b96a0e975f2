"""The admin lists recordings, plays them, and rebuilds their files; the sweep of recordings
whose worker died (both run the sync services directly)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone

from recordings import services
from recordings.formats import parse_format
from recordings.models import Recording
from streams.models import Chunk
from tests.recordings.clients import pcm

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client):
    user = User.objects.create_superuser("root", "root@example.com", "pw-for-tests")
    client.force_login(user)
    return client


def saved_recording(sid: str, *, stop: bool = True) -> Recording:
    recording, _ = services.recording_open(
        sid=sid, transport="websocket", fmt=parse_format({}), base_url="http://t", speaker="eve"
    )
    services.recording_chunk_add(recording_id=recording.pk, data=pcm(0.2))
    if stop:
        services.recording_stop(recording_id=recording.pk)
    return Recording.objects.get(pk=recording.pk)


def test_change_page_has_an_audio_player(admin_client):
    recording = saved_recording("adm1")
    listing = admin_client.get(reverse("admin:recordings_recording_changelist"))
    assert listing.status_code == 200 and b"adm1" in listing.content
    page = admin_client.get(reverse("admin:recordings_recording_change", args=[recording.pk]))
    assert page.status_code == 200
    assert b'<audio controls preload="none" src="/static/audio/adm1.wav">' in page.content
    assert b"key_hash" not in page.content


def test_rebuild_action_stops_and_saves(admin_client, recordings_dir):
    recording = saved_recording("adm2", stop=False)
    response = admin_client.post(
        reverse("admin:recordings_recording_changelist"),
        {"action": "rebuild_file", "_selected_action": [recording.pk]},
    )
    assert response.status_code == 302
    recording.refresh_from_db()
    assert recording.status == "complete" and recording.duration_ms == 200
    assert (recordings_dir / "adm2.wav").exists()


def test_recordings_whose_worker_died_are_saved_by_the_sweep(settings):
    settings.PARLEY_RECORDING_IDLE_S = 10
    stale = saved_recording("gone", stop=False)
    live = saved_recording("live", stop=False)
    quiet, _ = services.recording_open(
        sid="quiet", transport="socketio", fmt=parse_format({}), base_url="http://t", speaker="x"
    )
    long_ago = timezone.now() - timedelta(seconds=25)
    Chunk.objects.filter(stream=stale.stream).update(received_at=long_ago)
    Recording.objects.filter(pk=quiet.pk).update(created_at=long_ago)
    assert services.recordings_finish_abandoned(idle_s=10) == 1
    statuses = dict(Recording.objects.values_list("stream__stream_id", "status"))
    # "quiet" never sent a chunk: no record is kept.
    assert statuses == {"gone": "complete", "live": "recording"}
    assert live.status == "recording"
