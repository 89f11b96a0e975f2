"""POST /audio: the seed's fields, acknowledgements, and every bad input."""

from __future__ import annotations

from datetime import timedelta

import pytest

from streams.models import Chunk, Stream, Turn
from tests.conftest import b64, pcm

pytestmark = pytest.mark.django_db(transaction=True)

TENTH = pcm(0.1)  # 4800 bytes at the seed's default 24 kHz mono 16-bit


def assert_error(response, status: int, error: str, field: str | None):
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"] == error, body
    assert body["field"] == field, body
    assert isinstance(body["detail"], str) and body["detail"]
    return body


def test_first_chunk_claims_the_floor_and_is_acknowledged(post_chunk):
    response = post_chunk(data=TENTH)
    assert response.status_code == 200
    assert response.json() == {
        "stream_id": "s1",
        "seq": 0,
        "duplicate": False,
        "received_bytes": 4800,
        "received_chunks": 1,
        "done": False,
        "status": "streaming",
    }
    turn = Turn.objects.get()
    assert (turn.speaker, turn.status, turn.room.name) == ("alice", "claimed", "r1")


def test_final_chunk_reports_duration_and_predicted_end(post_chunk):
    post_chunk(seq=0, data=TENTH)
    response = post_chunk(seq=1, data=TENTH, done=True, speech_text="Hello there.")
    body = response.json()
    assert body["done"] is True
    assert body["duration_ms"] == 200
    assert body["playback_ends_at"].endswith("Z")
    stream = Stream.objects.get()
    assert stream.speech_text == "Hello there."
    assert stream.turn.status == "finalized"
    assert stream.turn.release_at == stream.playback_ends_at


def test_defaults_are_the_seeds(post_chunk):
    post_chunk(data=TENTH)
    stream = Stream.objects.get()
    assert (stream.sample_rate_hz, stream.channels, stream.bytes_per_sample) == (24000, 1, 2)
    assert stream.playback_speed == 1.0
    assert stream.room.name == "r1"


def test_room_and_speaker_default_to_default_and_agent(client):
    response = client.post(
        "/audio", {"stream_id": "bare", "seq": 0, "data": b64(TENTH)}, "application/json"
    )
    assert response.status_code == 200
    stream = Stream.objects.get()
    assert (stream.room.name, stream.speaker) == ("default", "agent")


def test_raw_body_with_query_parameters(client):
    response = client.post(
        "/audio?stream_id=raw1&seq=0&room=r1&speaker=bob&sample_rate_hz=16000&done=true",
        TENTH,
        content_type="application/octet-stream",
    )
    assert response.status_code == 200, response.content
    assert response.json()["duration_ms"] == 150
    assert bytes(Chunk.objects.get().data) == TENTH


def test_final_chunk_may_carry_no_data(post_chunk):
    post_chunk(seq=0, data=TENTH)
    response = post_chunk(seq=1, done=True)
    assert response.status_code == 200
    assert response.json()["received_bytes"] == 4800


def test_same_seq_same_bytes_is_an_idempotent_duplicate(post_chunk):
    post_chunk(seq=0, data=TENTH)
    response = post_chunk(seq=0, data=TENTH)
    assert response.status_code == 200
    assert response.json()["duplicate"] is True
    assert response.json()["received_chunks"] == 1
    assert Chunk.objects.count() == 1


def test_retried_final_chunk_after_finalization_is_a_duplicate(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True)
    response = post_chunk(seq=0, data=TENTH, done=True)
    assert response.status_code == 200
    assert response.json()["duplicate"] is True


def test_same_seq_other_bytes_conflicts(post_chunk):
    post_chunk(seq=0, data=TENTH)
    assert_error(post_chunk(seq=0, data=pcm(0.2)), 409, "chunk_conflict", "seq")


def test_out_of_order_chunks_are_accepted(post_chunk):
    assert post_chunk(seq=1, data=TENTH).status_code == 200
    assert post_chunk(seq=0, data=TENTH).status_code == 200
    response = post_chunk(seq=2, data=TENTH, done=True)
    assert response.json()["status"] == "playing"
    offsets = dict(Chunk.objects.values_list("seq", "offset_bytes"))
    assert offsets == {0: 0, 1: 4800, 2: 9600}


def test_chunk_after_finalization_conflicts(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True)
    assert_error(post_chunk(seq=1, data=TENTH), 409, "stream_finalized", "stream_id")


def test_another_speaker_while_floor_is_held(post_chunk):
    post_chunk(seq=0, data=TENTH)
    body = assert_error(
        post_chunk(stream_id="s2", speaker="bob", data=TENTH), 409, "floor_held", None
    )
    assert body["holder"] == "alice"
    assert body["turn_id"] == str(Turn.objects.get().id)
    assert "expected_release_at" in body


def test_stream_id_reused_by_another_speaker(post_chunk, client):
    post_chunk(seq=0, data=TENTH, done=True)
    Turn.objects.update(status="released")
    assert_error(
        post_chunk(seq=1, speaker="bob", data=TENTH), 409, "stream_id_conflict", "stream_id"
    )


def test_stream_id_reused_in_another_room(post_chunk):
    post_chunk(seq=0, data=TENTH)
    assert_error(post_chunk(seq=1, room="r2", data=TENTH), 409, "stream_id_conflict", "stream_id")


@pytest.mark.parametrize(
    ("fields", "error", "field"),
    [
        ({"data": "***not base64***"}, "bad_base64", "data"),
        ({"data": "AAAA\ud800AAA"}, "bad_base64", "data"),  # a lone surrogate
        ({"data": "AAAA\u00e9AAA"}, "bad_base64", "data"),  # not ASCII
        ({"data": "QUJD"}, "partial_frame", "data"),  # 3 bytes, 2-byte frames
        ({"sample_rate_hz": 7000}, "invalid_sample_rate_hz", "sample_rate_hz"),
        ({"sample_rate_hz": 96000}, "invalid_sample_rate_hz", "sample_rate_hz"),
        ({"channels": 3}, "invalid_channels", "channels"),
        ({"bytes_per_sample": 0}, "invalid_bytes_per_sample", "bytes_per_sample"),
        ({"bytes_per_sample": 5}, "invalid_bytes_per_sample", "bytes_per_sample"),
        ({"playback_speed": 0.1}, "invalid_playback_speed", "playback_speed"),
        ({"playback_speed": 4.5}, "invalid_playback_speed", "playback_speed"),
        ({"seq": -1}, "invalid_seq", "seq"),
        ({"seq": 1.5}, "invalid_seq", "seq"),
        ({"seq": "one"}, "invalid_seq", "seq"),
        ({"stream_id": ""}, "invalid_stream_id", "stream_id"),
        ({"stream_id": "x" * 129}, "invalid_stream_id", "stream_id"),
        ({"stream_id": "has space"}, "invalid_stream_id", "stream_id"),
        ({"stream_id": "slash/no"}, "invalid_stream_id", "stream_id"),
        ({"room": "bad room!"}, "invalid_room", "room"),
        ({"speaker": "a b"}, "invalid_speaker", "speaker"),
        ({"data": ""}, "empty_chunk", "data"),
    ],
)
def test_bad_input_names_the_field(post_chunk, fields, error, field):
    values = {"data": TENTH, **fields}
    assert_error(post_chunk(**values), 400, error, field)
    assert Stream.objects.count() == 0


def test_missing_seq_is_reported(client):
    response = client.post("/audio", {"stream_id": "s"}, "application/json")
    assert_error(response, 400, "invalid_seq", "seq")


def test_missing_stream_id_is_reported(client):
    response = client.post("/audio", {"seq": 0}, "application/json")
    assert_error(response, 400, "invalid_stream_id", "stream_id")


def test_format_changed_mid_stream(post_chunk):
    post_chunk(seq=0, data=TENTH)
    assert_error(
        post_chunk(seq=1, data=TENTH, sample_rate_hz=16000), 400, "format_changed", "sample_rate_hz"
    )
    assert_error(post_chunk(seq=1, data=TENTH, channels=2), 400, "format_changed", "channels")


def test_chunk_over_one_mebibyte(post_chunk):
    assert_error(post_chunk(data=b"\x00" * (1024 * 1024 + 2)), 413, "chunk_too_large", "data")


def test_raw_chunk_over_one_mebibyte(client):
    response = client.post(
        "/audio?stream_id=big&seq=0", b"\x00" * (1024 * 1024 + 2), "application/octet-stream"
    )
    assert_error(response, 413, "chunk_too_large", "data")


def test_stream_over_the_stream_limit(post_chunk, settings):
    settings.PARLEY_MAX_STREAM_BYTES = 10000
    post_chunk(seq=0, data=TENTH)
    post_chunk(seq=1, data=TENTH)
    assert_error(post_chunk(seq=2, data=TENTH), 413, "stream_too_large", "data")
    assert Stream.objects.get().total_bytes == 9600


def test_malformed_json(client):
    response = client.post("/audio", "{not json", content_type="application/json")
    assert_error(response, 400, "malformed_json", None)


def test_json_that_is_not_an_object(client):
    response = client.post("/audio", "[1, 2]", content_type="application/json")
    assert_error(response, 400, "malformed_json", None)


def test_unsupported_content_type(client):
    response = client.post("/audio", "seq=0", content_type="text/plain")
    assert_error(response, 415, "unsupported_media_type", "Content-Type")


def test_get_is_not_allowed(client):
    assert_error(client.get("/audio"), 405, "method_not_allowed", None)


def test_second_done_at_another_seq_conflicts(post_chunk):
    post_chunk(seq=2, data=TENTH, done=True)  # waits for 0 and 1
    assert_error(post_chunk(seq=1, data=TENTH, done=True), 409, "already_done", "done")


def test_seq_after_the_final_seq(post_chunk):
    post_chunk(seq=1, data=TENTH, done=True)
    assert_error(post_chunk(seq=5, data=TENTH), 400, "seq_after_final", "seq")


def test_done_below_a_received_seq(post_chunk):
    post_chunk(seq=3, data=TENTH)
    assert_error(post_chunk(seq=1, data=TENTH, done=True), 400, "seq_before_received", "seq")


def test_a_second_stream_in_a_playing_turn_is_refused(post_chunk):
    post_chunk(seq=0, data=TENTH, done=True)
    body = assert_error(post_chunk(stream_id="s2", data=TENTH), 409, "floor_busy", "stream_id")
    assert body["holder"] == "alice"


def test_next_in_order_chunk_takes_the_lean_path():
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from streams.audio import PcmFormat
    from streams.services import ChunkIn, chunk_ingest

    def send(seq: int) -> dict:
        return chunk_ingest(
            ChunkIn(
                room_name="r1",
                speaker="alice",
                stream_id="lean",
                seq=seq,
                data=TENTH,
                done=False,
                speech_text="",
                fmt=PcmFormat(),
            )
        )

    send(0)
    with CaptureQueriesContext(connection) as queries:
        ack = send(1)
    assert ack["received_chunks"] == 2 and ack["received_bytes"] == 9600
    statements = [q["sql"].split()[0].upper() for q in queries.captured_queries]
    if connection.vendor == "postgresql":
        # The room lock and the stream read (one pipelined round trip) and the write (one
        # statement) run on psycopg cursors of their own, outside Django's query log.
        assert "SELECT" not in statements and "INSERT" not in statements, statements
    else:
        assert statements.count("SELECT") == 2, statements
        assert len(statements) <= 9, statements  # BEGIN, 2 SELECT, 2 INSERT, 2-3 UPDATE, COMMIT
    chunk = Chunk.objects.get(seq=1)
    assert (chunk.offset_bytes, chunk.size) == (4800, 4800)
    first = Chunk.objects.get(seq=0)
    # Queued right behind the first on the playhead, or at its arrival if the first had
    # already played out (a loaded machine can take over 0.1 s between the two sends).
    expected = max(first.play_start_at + timedelta(seconds=0.1), chunk.received_at)
    assert abs((chunk.play_start_at - expected).total_seconds()) <= 0.001
