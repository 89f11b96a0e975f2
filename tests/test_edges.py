"""Odd input at the edges of the core API: a clear 4xx with the field, never a 500."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from streams import selectors
from streams.models import RoomEvent, Stream
from tests.conftest import pcm
from tests.support.errors import flat_error

pytestmark = pytest.mark.django_db(transaction=True)
TENTH = pcm(0.1)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json"), response.content
    return flat_error(response.json(), response.request["PATH_INFO"])


def test_floor_delete_with_a_body_that_is_not_an_object(client):
    client.post("/api/rooms/lobby/floor", {"speaker": "ann"}, "application/json")
    body = error_of(client.delete("/api/rooms/lobby/floor", "[1]", "application/json"), 400)
    assert body["field"] is None or body["field"] == "speaker"
    body = error_of(
        client.delete("/api/rooms/lobby/floor", {"speaker": 5}, "application/json"), 400
    )
    assert (body["error"], body["field"]) == ("invalid_speaker", "speaker")
    ok = client.delete("/api/rooms/lobby/floor", {"speaker": "ann"}, "application/json")
    assert ok.status_code == 200, ok.content


def test_floor_claim_speaker_must_be_a_string(client):
    body = error_of(client.post("/api/rooms/lobby/floor", {"speaker": 5}, "application/json"), 400)
    assert (body["error"], body["field"]) == ("invalid_speaker", "speaker")


@pytest.mark.parametrize("name", ["lob\n", "x\n"])
def test_names_with_a_trailing_newline_are_refused(client, post_chunk, name):
    path = f"/api/rooms/{name.replace(chr(10), '%0A')}/floor"  # the client would strip a raw \n
    error_of(client.post(path, {}, "application/json"), 400)
    assert error_of(post_chunk(stream_id=name, data=TENTH), 400)["field"] == "stream_id"
    assert error_of(post_chunk(room=name, data=TENTH), 400)["field"] == "room"
    assert error_of(post_chunk(speaker=name, data=TENTH), 400)["field"] == "speaker"


def test_a_huge_limit_is_clamped(client, post_chunk):
    post_chunk(seq=0, data=TENTH)
    response = client.get("/api/streams?limit=99999999999999999999999")
    assert response.status_code == 200 and response.json()["count"] == 1


def test_openapi_json_is_json(client):
    response = client.get("/openapi.json")
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert response.json()["openapi"].startswith("3.")


@pytest.mark.parametrize("path", ["/api/nope", "/audio/", "/api/rooms/lobby/", "/v1/nope"])
def test_unknown_api_paths_are_json_404s(client, path):
    assert error_of(client.get(path), 404)["error"] == "not_found"


def test_writing_to_the_events_endpoint_is_a_json_405(client):
    assert error_of(client.post("/api/rooms/lobby/events"), 405)["error"] == "method_not_allowed"


def test_long_poll_after_beyond_the_log_says_where_the_log_is(client, post_chunk):
    post_chunk(seq=0, data=TENTH)
    last = client.get("/api/rooms/r1/events").json()["last_id"]
    assert client.get("/api/rooms/r1/events?after=1000").json() == {"events": [], "last_id": last}


def test_speech_text_is_not_shown_before_it_is_said(client, post_chunk):
    post_chunk(seq=0, data=TENTH, done=True, speech_text="A secret.")
    assert client.get("/api/streams/s1").json()["speech_text"] is None
    Stream.objects.update(ended_at=Stream.objects.get().created_at)  # as a release does
    assert client.get("/api/streams/s1").json()["speech_text"] == "A secret."


def test_an_event_page_stops_at_its_audio_budget(monkeypatch, post_chunk):
    for seq in range(6):
        post_chunk(seq=seq, data=TENTH)
    monkeypatch.setattr(selectors, "EVENT_PAGE_AUDIO_BYTES", 2 * len(TENTH))
    room = RoomEvent.objects.first().room
    page, more = selectors.events_after(room, after=0)
    assert more and [e["type"] for e in page].count("audio_chunk") == 2
    rest, more = selectors.events_after(room, after=page[-1]["id"])
    assert more and rest[0]["id"] == page[-1]["id"] + 1  # nothing skipped


def test_the_event_log_cannot_be_edited_in_the_admin(client, post_chunk):
    post_chunk(seq=0, data=TENTH)
    get_user_model().objects.create_superuser("boss", "", "pw-boss-123")
    client.login(username="boss", password="pw-boss-123")
    event = RoomEvent.objects.first()
    assert client.get("/admin/streams/roomevent/add/").status_code == 403
    assert client.get(f"/admin/streams/roomevent/{event.pk}/delete/").status_code == 403
    assert client.get(f"/admin/streams/roomevent/{event.pk}/change/").status_code == 200  # view


def test_create_api_key_refuses_a_bad_name_with_a_command_error():
    from django.core.management import CommandError, call_command

    with pytest.raises(CommandError, match="speaker"):
        call_command("create_api_key", "bad name")


def test_a_wrong_key_is_refused_on_the_long_poll_too(client):
    response = client.get("/api/rooms/r1/events", HTTP_AUTHORIZATION="Bearer pk_nope")
    assert error_of(response, 401)["error"] == "invalid_api_key"
    assert client.get("/api/rooms/r1/events").status_code == 200  # no key: fine
