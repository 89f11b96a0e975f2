"""GET /api/rooms: every room with its state, paginated, filterable by activity."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from streams.models import Room, SpectatorPresence

pytestmark = pytest.mark.django_db(transaction=True)


def claim(client, room: str, speaker: str = "alice"):
    answer = client.post(f"/api/rooms/{room}/floor", {"speaker": speaker}, "application/json")
    assert answer.status_code == 201, answer.json()
    return answer.json()


def release(client, room: str, speaker: str = "alice") -> None:
    answer = client.delete(f"/api/rooms/{room}/floor?speaker={speaker}")
    assert answer.status_code == 200, answer.json()


def rooms(client, query: str = "") -> dict:
    answer = client.get(f"/api/rooms{query}")
    assert answer.status_code == 200, answer.json()
    return answer.json()


def names(body: dict) -> list[str]:
    return [item["room"] for item in body["results"]]


def test_no_rooms_is_an_empty_page(client):
    assert rooms(client) == {"count": 0, "next": None, "previous": None, "results": []}


def test_a_held_floor_and_an_idle_room(client):
    claim(client, "quiet")
    release(client, "quiet")
    turn = claim(client, "busy", "bob")
    SpectatorPresence.objects.create(
        room=Room.objects.get(name="busy"), channel_name="spectator.x", seen_at=timezone.now()
    )

    body = rooms(client)
    assert body["count"] == 2
    # The most recent activity first: "busy" was claimed after "quiet" was released.
    assert names(body) == ["busy", "quiet"]
    busy, quiet = body["results"]
    assert busy["active"] is True
    assert busy["speaker"] == "bob"
    assert busy["turn"]["turn_id"] == turn["turn_id"]
    assert busy["turn"]["status"] == "claimed"
    assert busy["turn"]["claimed_at"] == turn["claimed_at"]
    assert busy["stream"] is None
    assert busy["spectators"] == 1
    room = Room.objects.get(name="busy")
    assert busy["last_event_id"] == room.last_event_id > 0
    assert busy["last_activity_at"] >= busy["turn"]["claimed_at"]
    assert quiet["active"] is False
    assert quiet["speaker"] is None and quiet["turn"] is None and quiet["stream"] is None
    assert quiet["spectators"] == 0

    assert names(rooms(client, "?active=true")) == ["busy"]
    assert names(rooms(client, "?active=1")) == ["busy"]
    assert names(rooms(client, "?active=FALSE")) == ["quiet"]
    assert names(rooms(client, "?ordering=room")) == ["busy", "quiet"]
    assert names(rooms(client, "?ordering=-room")) == ["quiet", "busy"]
    assert names(rooms(client, "?ordering=last_activity_at")) == ["quiet", "busy"]


def test_a_live_stream_makes_a_room_active(client, post_chunk):
    post_chunk(stream_id="live-1", room="radio", speaker="carol", seq=0, data=b"\0\0" * 2400)

    (item,) = rooms(client, "?active=true")["results"]
    assert item["room"] == "radio"
    assert item["speaker"] == "carol"
    assert item["stream"] == {
        "stream_id": "live-1",
        "kind": "speech",
        "speaker": "carol",
        "status": "streaming",
    }


def test_since_keeps_recent_activity(client):
    claim(client, "r1")
    now = timezone.now()
    later = (now + timedelta(minutes=5)).isoformat()
    earlier = (now - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    assert names(rooms(client, f"?since={earlier}")) == ["r1"]
    assert rooms(client, "?since=" + later.replace("+", "%2B"))["count"] == 0
    # An offset, lower case, a fraction finer than microseconds.
    assert rooms(client, "?since=2000-01-01T02:00:00%2B02:00")["count"] == 1
    assert rooms(client, "?since=2000-01-01t00:00:00.1234567z")["count"] == 1
    # Valid date-times at the ends of the calendar, beyond datetime's range once in UTC.
    assert rooms(client, "?since=0001-01-01T00:00:00%2B05:00")["count"] == 1
    assert rooms(client, "?since=9999-12-31T23:00:00-05:00")["count"] == 0


def test_pagination(client):
    for name in ("a", "b", "c"):
        claim(client, name)
    first = rooms(client, "?limit=2")
    assert first["count"] == 3 and len(first["results"]) == 2
    assert first["next"] is not None
    second = rooms(client, "?limit=2&offset=2")
    assert len(second["results"]) == 1
    assert set(names(first)) | set(names(second)) == {"a", "b", "c"}


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("active=maybe", "invalid_active"),
        ("active=", "invalid_active"),
        ("since=", "invalid_since"),
        ("ordering=", "invalid_ordering"),
        ("since=yesterday", "invalid_since"),
        ("since=2025-13-01T00:00:00Z", "invalid_since"),
        ("since=2025-01-01", "invalid_since"),
        ("since=2025-01-01T00:00:00", "invalid_since"),
        ("since=2025-01-01 00:00:00Z", "invalid_since"),
        ("since=%202025-01-01T00:00:00Z", "invalid_since"),
        ("since=2025-02-30T00:00:00Z", "invalid_since"),
        ("since=" + "9" * 5000, "invalid_since"),
        ("ordering=name", "invalid_ordering"),
        ("limit=0", "invalid_limit"),
        ("offset=-1", "invalid_offset"),
    ],
)
def test_bad_parameters_are_refused_by_name(client, query, error):
    answer = client.get(f"/api/rooms?{query}")
    assert answer.status_code == 400
    body = answer.json()
    assert body["error"] == error
    assert body["field"] == error.removeprefix("invalid_")


def test_the_schema_describes_the_answer(client):
    claim(client, "r1")
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/api/rooms"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {
        "active",
        "since",
        "ordering",
        "limit",
        "offset",
    }
    page_ref = operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    page = schema["components"]["schemas"][page_ref.rsplit("/", 1)[-1]]
    item_ref = page["properties"]["results"]["items"]["$ref"]
    item = schema["components"]["schemas"][item_ref.rsplit("/", 1)[-1]]
    (answer,) = rooms(client)["results"]
    assert set(answer) == set(item["properties"])
