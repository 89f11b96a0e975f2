"""Floor claims, yielding, cutting off, room snapshots, streams and the events API."""

from __future__ import annotations

import io
import wave

import pytest
from django.core.management import call_command

from streams.models import ApiKey, RoomEvent, Stream, Turn
from tests.conftest import pcm
from tests.test_audio_api import assert_error

pytestmark = pytest.mark.django_db(transaction=True)
TENTH = pcm(0.1)


def claim(client, speaker="alice", room="r1", **headers):
    return client.post(
        f"/api/rooms/{room}/floor", {"speaker": speaker}, "application/json", **headers
    )


def test_claim_returns_the_turn(client):
    response = claim(client)
    assert response.status_code == 201
    body = response.json()
    assert set(body) >= {"turn_id", "speaker", "status", "claimed_at", "lease_expires_at"}
    assert (body["speaker"], body["status"]) == ("alice", "claimed")


def test_same_speaker_again_gets_the_same_turn(client):
    first = claim(client).json()
    again = claim(client)
    assert again.status_code == 200
    assert again.json()["turn_id"] == first["turn_id"]


def test_another_speaker_gets_floor_held(client):
    first = claim(client).json()
    body = assert_error(claim(client, "bob"), 409, "floor_held", None)
    assert body["holder"] == "alice"
    assert body["turn_id"] == first["turn_id"]
    assert body["expected_release_at"] is None


def test_claimed_floor_lets_the_holder_stream(client, post_chunk):
    turn_id = claim(client).json()["turn_id"]
    post_chunk(seq=0, data=TENTH)
    assert str(Stream.objects.get().turn_id) == turn_id


def test_holder_yields_an_idle_floor(client):
    claim(client)
    response = client.delete("/api/rooms/r1/floor?speaker=alice")
    assert response.status_code == 200
    assert response.json()["status"] == "released"
    assert claim(client, "bob").status_code == 201


def test_yield_mid_stream_interrupts_it(client, post_chunk):
    post_chunk(seq=0, data=TENTH)
    response = client.delete("/api/rooms/r1/floor?speaker=alice")
    assert response.json()["status"] == "interrupted"
    stream = Stream.objects.get()
    assert stream.status == "interrupted"
    assert 0 <= stream.heard_ms <= 100
    kinds = list(RoomEvent.objects.order_by("seq").values_list("type", flat=True))
    assert kinds[-2:] == ["turn", "state"]


def test_moderator_force_cuts_a_speaker_off(client, post_chunk):
    post_chunk(seq=0, data=TENTH, done=True)
    response = client.delete("/api/rooms/r1/floor?force=1")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["reason"]) == ("interrupted", "forced")


def test_non_holder_cannot_yield(client):
    claim(client)
    assert_error(client.delete("/api/rooms/r1/floor?speaker=bob"), 403, "not_holder", "speaker")


def test_yield_of_a_free_floor(client):
    assert_error(client.delete("/api/rooms/r1/floor?speaker=bob"), 409, "floor_free", None)


def test_bad_force_value(client):
    assert_error(client.delete("/api/rooms/r1/floor?force=maybe"), 400, "invalid_force", "force")


def test_bad_room_name(client):
    assert_error(claim(client, room="no%20spaces"), 400, "invalid_room", "room")


@pytest.mark.parametrize("speaker", ["has space", "", " ", "x" * 129])
def test_bad_speaker_name(client, speaker):
    assert_error(claim(client, speaker=speaker), 400, "invalid_speaker", "speaker")


def test_an_empty_speaker_in_a_form_is_refused_too(client):
    # DRF reads an empty form field as null (the default speaker): schemathesis found it.
    response = client.post("/api/rooms/r1/floor", {"speaker": ""})  # multipart
    assert_error(response, 400, "invalid_speaker", "speaker")


def test_the_schema_says_which_speaker_names_a_claim_takes(client):
    # schemathesis found `{"speaker": ""}` schema-valid but refused: the schema must say why.
    schema = client.get("/openapi.json?format=json").json()["components"]["schemas"]
    claim_body = schema.get("FloorClaimRequest") or schema["FloorClaim"]
    assert claim_body["properties"]["speaker"]["pattern"] == "^[A-Za-z0-9._:@-]{1,128}$"


def test_claim_with_malformed_json(client):
    response = client.post("/api/rooms/r1/floor", "{", content_type="application/json")
    assert_error(response, 400, "malformed_json", None)


def test_room_snapshot_has_the_state_shape(client, post_chunk):
    empty = client.get("/api/rooms/r1").json()
    assert empty["speaker"] is None and empty["turn"] is None and empty["stream"] is None
    post_chunk(seq=0, data=TENTH)
    state = client.get("/api/rooms/r1").json()
    assert state["type"] == "state"
    assert state["speaker"] == "alice"
    assert state["turn"]["status"] == "claimed"
    assert state["stream"]["stream_id"] == "s1"
    assert 0 <= state["stream"]["playhead_ms"] <= 100
    assert state["spectators"] == 0
    assert state["last_event_id"] == RoomEvent.objects.count()


def test_stream_detail_and_wav(client, post_chunk):
    post_chunk(seq=0, data=TENTH)
    post_chunk(seq=2, data=TENTH)
    body = client.get("/api/streams/s1").json()
    assert body["bytes"] == 9600 and body["chunks"] == 2
    assert body["missing_seqs"] == [1]
    assert body["duration_ms"] == 200
    response = client.get("/api/streams/s1/audio.wav")
    assert response["Content-Type"] == "audio/wav"
    wav = wave.open(io.BytesIO(response.content))
    assert wav.getframerate() == 24000
    assert wav.getnframes() == 4800
    assert wav.readframes(4800) == TENTH + TENTH


def test_unknown_stream_is_404(client):
    assert_error(client.get("/api/streams/nope"), 404, "not_found", "stream_id")
    assert_error(client.get("/api/streams/nope/audio.wav"), 404, "not_found", "stream_id")


def test_stream_list_filters_and_paginates(client, post_chunk):
    post_chunk(stream_id="a", seq=0, data=TENTH, done=True)
    Turn.objects.update(status="released")
    post_chunk(stream_id="b", seq=0, data=TENTH, speaker="bob", room="r2")
    assert client.get("/api/streams").json()["count"] == 2
    assert [s["stream_id"] for s in client.get("/api/streams?room=r2").json()["results"]] == ["b"]
    assert client.get("/api/streams?speaker=alice").json()["results"][0]["stream_id"] == "a"
    assert client.get("/api/streams?status=streaming").json()["count"] == 1
    page = client.get("/api/streams?limit=1").json()
    assert len(page["results"]) == 1 and page["next"]
    assert_error(client.get("/api/streams?status=weird"), 400, "invalid_status", "status")
    assert_error(client.get("/api/streams?room=bad%20room"), 400, "invalid_room", "room")


def test_events_api_returns_the_log_filtered(client, post_chunk):
    post_chunk(seq=0, data=TENTH, done=True, speech_text="x")
    body = client.get("/api/rooms/r1/events").json()
    assert [e["type"] for e in body["events"]][:3] == ["turn", "state", "audio_chunk"]
    assert body["last_id"] == body["events"][-1]["id"]
    only_turns = client.get("/api/rooms/r1/events?types=turn").json()
    assert [e["type"] for e in only_turns["events"]] == ["turn"]
    later = client.get(f"/api/rooms/r1/events?after={body['last_id']}").json()
    assert later == {"events": [], "last_id": body["last_id"]}
    audio = next(e for e in body["events"] if e["type"] == "audio_chunk")
    assert audio["data"] and audio["offset_ms"] == 0


@pytest.mark.parametrize(
    ("query", "error", "field"),
    [
        ("after=-1", "invalid_after", "after"),
        ("after=x", "invalid_after", "after"),
        ("wait=31", "invalid_wait", "wait"),
        ("wait=soon", "invalid_wait", "wait"),
        ("types=turn,bogus", "invalid_types", "types"),
    ],
)
def test_events_api_bad_input(client, query, error, field):
    assert_error(client.get(f"/api/rooms/r1/events?{query}"), 400, error, field)


def test_events_api_unknown_room_is_empty(client):
    assert client.get("/api/rooms/ghost/events").json() == {"events": [], "last_id": 0}


# --- identity ------------------------------------------------------------------------------


def make_key(speaker: str, *extra: str) -> str:
    out = io.StringIO()
    call_command("create_api_key", speaker, *extra, stdout=out)
    return out.getvalue().strip()


def test_create_api_key_prints_once_and_stores_a_hash():
    raw = make_key("alice")
    key = ApiKey.objects.get()
    assert raw.startswith("pk_") and len(raw) > 30
    assert raw not in (key.key_hash, key.prefix) and key.speaker == "alice"


def test_auth_required_rejects_anonymous_writes(client, settings):
    settings.PARLEY_REQUIRE_AUTH = True
    assert_error(claim(client), 401, "auth_required", "Authorization")  # as POST /audio says it
    response = client.post("/audio", {"stream_id": "s", "seq": 0, "data": ""}, "application/json")
    assert_error(response, 401, "auth_required", "Authorization")
    assert client.get("/api/rooms/r1").status_code == 200  # reads stay open


def test_auth_key_names_the_speaker(client, settings):
    settings.PARLEY_REQUIRE_AUTH = True
    raw = make_key("alice")
    auth = {"HTTP_AUTHORIZATION": f"Bearer {raw}"}
    response = client.post(
        "/audio",
        {"stream_id": "s", "seq": 0, "data": "", "done": True, "room": "r1"},
        "application/json",
        **auth,
    )
    assert response.status_code == 200, response.content
    assert Stream.objects.get().speaker == "alice"
    assert claim(client, "alice", **auth).status_code == 201


def test_auth_body_speaker_must_match_the_key(client, settings):
    settings.PARLEY_REQUIRE_AUTH = True
    auth = {"HTTP_AUTHORIZATION": f"Bearer {make_key('alice')}"}
    assert_error(claim(client, "mallory", **auth), 403, "speaker_mismatch", "speaker")
    response = client.post(
        "/audio",
        {"stream_id": "s", "seq": 0, "data": "", "speaker": "mallory"},
        "application/json",
        **auth,
    )
    assert_error(response, 403, "speaker_mismatch", "speaker")


def test_auth_bad_keys(client):
    assert_error(
        claim(client, HTTP_AUTHORIZATION="Bearer pk_wrong"), 401, "invalid_api_key", "Authorization"
    )
    assert_error(
        claim(client, HTTP_AUTHORIZATION="Basic abc"), 401, "invalid_authorization", "Authorization"
    )


def test_only_moderators_may_force(client, settings):
    settings.PARLEY_REQUIRE_AUTH = True
    alice = {"HTTP_AUTHORIZATION": f"Bearer {make_key('alice')}"}
    bob = {"HTTP_AUTHORIZATION": f"Bearer {make_key('bob')}"}
    mod = {"HTTP_AUTHORIZATION": f"Bearer {make_key('mod', '--moderator')}"}
    claim(client, "alice", **alice)
    assert_error(client.delete("/api/rooms/r1/floor?force=1", **bob), 403, "not_moderator", "force")
    assert_error(client.delete("/api/rooms/r1/floor", **bob), 403, "not_holder", "speaker")
    assert client.delete("/api/rooms/r1/floor?force=1", **mod).status_code == 200
