"""Issue 8 §1: the cost of a request is bounded by its size, and every number a client sends
is validated with a clear `invalid_<field>`, never a 500, a 1011 or a hang.

HTTP through Django's test client, sockets through the real ASGI application in one loop,
Socket.IO through the seed's client against a real daphne.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.utils import timezone

from config.asgi import application
from streams.models import Stream
from streams.scheduler import sweep_once
from tests.conftest import pcm
from tests.recordings.clients import SioSession, start_embedded
from tests.support.servers import DaphneProcess

HUGE = "9" * 5000  # past Python's int-conversion limit (4300 digits)
FRAME = b"\x01\x00\x02\x00"  # two 16-bit samples: the smallest sensible chunk here
TENTH = pcm(0.1)

pytestmark = pytest.mark.django_db(transaction=True)


def max_seq() -> int:
    return django_settings.PARLEY_MAX_CHUNKS_PER_STREAM - 1


# --- seq and the missing seqs ------------------------------------------------------------


def test_the_default_chunk_limit_follows_from_the_byte_limit():
    # At the default format a stream of 10 ms chunks reaches both limits together.
    ten_ms = 24000 * 2 // 100
    limit = django_settings.PARLEY_MAX_CHUNKS_PER_STREAM
    assert limit == django_settings.PARLEY_MAX_STREAM_BYTES // ten_ms


def test_seq_past_what_a_stream_may_hold_is_refused(post_chunk, client):
    response = post_chunk(seq=max_seq() + 1, data=FRAME, done=True)
    assert response.status_code == 400
    body = response.json()
    assert (body["error"], body["field"]) == ("invalid_seq", "seq")
    assert "PARLEY_MAX_CHUNKS_PER_STREAM" in body["detail"]
    raw = client.post(
        f"/audio?stream_id=raw&room=r1&seq={max_seq() + 1}",
        FRAME,
        content_type="application/octet-stream",
    )
    assert (raw.status_code, raw.json()["error"]) == (400, "invalid_seq")
    assert not Stream.objects.exists()
    assert post_chunk(seq=max_seq(), data=FRAME).status_code == 200


def test_one_far_final_chunk_makes_a_small_ack_and_a_small_stream_list(post_chunk, client):
    far = max_seq()
    response = post_chunk(seq=far, data=FRAME, done=True)
    assert response.status_code == 200
    assert len(response.content) < 4096
    ack = response.json()
    assert ack["status"] == "awaiting_gaps"
    assert ack["missing_count"] == far
    assert ack["missing_ranges"] == [[0, far - 1]]
    assert len(ack["missing_seqs"]) <= 100 and ack["missing_seqs"][:3] == [0, 1, 2]

    Stream.objects.update(gap_deadline=timezone.now() - timedelta(seconds=1))
    sweep_once()
    stream = Stream.objects.get()
    assert stream.status == "playing"
    assert (stream.missing_count, stream.missing_ranges) == (far, [[0, far - 1]])
    listing = client.get("/api/streams")
    assert listing.status_code == 200 and len(listing.content) < 8192
    (item,) = listing.json()["results"]
    assert (item["missing_count"], item["missing_ranges"]) == (far, [[0, far - 1]])
    detail = client.get("/api/streams/s1")
    assert len(detail.content) < 4096


def test_many_gaps_are_listed_up_to_a_cap_and_counted_exactly(post_chunk, client):
    for seq in range(0, 302, 2):  # 0, 2, ... 300: 150 one-seq gaps, then one before the final
        assert post_chunk(seq=seq, data=TENTH).status_code == 200
    ack = post_chunk(seq=303, data=TENTH, done=True).json()
    gaps = [[seq, seq] for seq in range(1, 302, 2)] + [[302, 302]]
    assert ack["missing_count"] == len(gaps)
    assert ack["missing_ranges"] == gaps[:100]
    assert ack["missing_seqs"] == [first for first, _ in gaps[:100]]
    open_stream = client.get("/api/streams/s1").json()
    assert (open_stream["missing_count"], open_stream["missing_ranges"]) == (
        len(gaps),
        gaps[:100],
    )
    # A gap filled meanwhile is no longer missing.
    assert post_chunk(seq=1, data=TENTH).json()["missing_ranges"][0] == [3, 3]


# --- huge and odd numbers over HTTP -------------------------------------------------------


JSON_CASES = [
    ('{"stream_id": "s1", "seq": ' + HUGE + "}", "invalid_seq"),
    ('{"stream_id": "s1", "seq": -' + HUGE + "}", "invalid_seq"),
    ('{"stream_id": "s1", "seq": 1e400}', "invalid_seq"),
    ('{"stream_id": "s1", "seq": 0.5}', "invalid_seq"),
    ('{"stream_id": "s1", "seq": 0, "data": "AAAA", "channels": ' + HUGE + "}", "invalid_channels"),
    ('{"stream_id": "s1", "seq": 0, "data": "AAAA", "channels": 1.5}', "invalid_channels"),
    ('{"stream_id": "s1", "seq": 0, "sample_rate_hz": 1e400}', "invalid_sample_rate_hz"),
    ('{"stream_id": "s1", "seq": 0, "playback_speed": ' + HUGE + "}", "invalid_playback_speed"),
]


def test_huge_or_fractional_json_numbers_name_their_field(client):
    for body, error in JSON_CASES:
        response = client.post("/audio", body, content_type="application/json")
        assert response.status_code == 400, body[:80]
        assert response.json()["error"] == error, (body[:80], response.json())
        assert response.json()["field"] == error.removeprefix("invalid_")


def test_integral_json_numbers_are_the_integers_they_are(post_chunk):
    response = post_chunk(
        seq=0.0,
        data=pcm(0.1, sample_rate=16000),
        channels=1.0,
        sample_rate_hz=16000.0,
        bytes_per_sample=2.0,
    )
    assert response.status_code == 200, response.content
    stream = Stream.objects.get()
    assert (stream.sample_rate_hz, stream.channels, stream.bytes_per_sample) == (16000, 1, 2)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("seq=" + HUGE, "invalid_seq"),
        ("seq=0&sample_rate_hz=" + HUGE, "invalid_sample_rate_hz"),
        ("seq=0&channels=1.5", "invalid_channels"),
    ],
)
def test_huge_numbers_in_a_raw_chunks_query_name_their_field(client, query, error):
    response = client.post(
        f"/audio?stream_id=s1&{query}", FRAME, content_type="application/octet-stream"
    )
    assert response.status_code == 400
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("limit=-1", "invalid_limit"),
        ("limit=0", "invalid_limit"),
        ("limit=ten", "invalid_limit"),
        ("offset=" + "9" * 30, "invalid_offset"),
        ("offset=" + HUGE, "invalid_offset"),
        ("offset=-5", "invalid_offset"),
    ],
)
def test_pagination_numbers_are_validated(post_chunk, client, query, error):
    post_chunk(seq=0, data=TENTH)  # a row, so the offset reaches the database
    response = client.get(f"/api/streams?{query}")
    assert response.status_code == 400, response.content
    assert response.json() == {
        "error": error,
        "detail": response.json()["detail"],
        "field": error.removeprefix("invalid_"),
    }


def test_long_poll_numbers_are_validated(client):
    for query, error in [
        ("after=" + HUGE, "invalid_after"),
        ("after=" + "9" * 30, "invalid_after"),
        ("after=1.5", "invalid_after"),
        ("wait=" + HUGE, "invalid_wait"),
        ("wait=nan", "invalid_wait"),
        ("wait=1e400", "invalid_wait"),
    ]:
        response = client.get(f"/api/rooms/r1/events?{query}")
        assert response.status_code == 400, query[:40]
        assert response.json()["error"] == error
        assert response.json()["field"] == error.removeprefix("invalid_")


# --- sockets ------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [HUGE, "9" * 30, "-1", "1.5"])
async def test_spectator_handshake_with_a_bad_after_gets_an_error_frame_and_4400(after):
    communicator = WebsocketCommunicator(application, f"/spectate/ws?room=r1&after={after}")
    connected, _ = await communicator.connect()
    assert connected
    message = await communicator.receive_json_from(timeout=5)
    assert (message["type"], message["error"], message["field"]) == (
        "error",
        "invalid_after",
        "after",
    )
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4400, "reason": "invalid_after"}
    await communicator.disconnect()


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("sample_rate_hz=" + HUGE, "invalid_sample_rate_hz"),
        ("channels=" + HUGE, "invalid_channels"),
        ("channels=1.5", "invalid_channels"),
    ],
)
async def test_streaming_socket_with_a_huge_number_gets_an_error_frame_and_4400(
    query, error, recordings_dir
):
    communicator = WebsocketCommunicator(
        application, f"/ws/streaming?{query}", headers=[(b"host", b"t")]
    )
    connected, _ = await communicator.connect()
    assert connected
    message = await communicator.receive_json_from(timeout=5)
    assert (message["event"], message["data"]["error"]) == ("error", error)
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4400, "reason": error}
    await communicator.disconnect()


@pytest.fixture
def recordings_dir(settings, tmp_path: Path) -> Path:
    settings.PARLEY_RECORDINGS_DIR = tmp_path / "recordings"
    return settings.PARLEY_RECORDINGS_DIR


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneProcess]:
    (process,) = start_embedded(tmp_path_factory.mktemp("bounds-var"))
    yield process
    process.stop()


@pytest.mark.timeout(60)
async def test_socketio_handshake_with_a_bad_number_is_refused_with_the_error(server):
    for auth, error in [
        ({"sample_rate_hz": HUGE}, "invalid_sample_rate_hz"),
        ({"channels": "1" + HUGE}, "invalid_channels"),
        ({"channels": 1.5}, "invalid_channels"),
        ({"bytes_per_sample": "2.5"}, "invalid_bytes_per_sample"),
    ]:
        client = SioSession()
        with pytest.raises(Exception, match="One or more namespaces failed to connect"):
            await client.connect(server.url, auth=auth)
        assert client.connect_error["data"]["error"] == error
        assert client.connect_error["data"]["field"] == error.removeprefix("invalid_")


@pytest.mark.timeout(60)
async def test_socketio_integral_numbers_are_accepted(server):
    client = SioSession()
    hello = await client.connect(server.url, auth={"sample_rate_hz": 16000.0, "channels": 1.0})
    assert "streaming_key" in hello
    assert (await client.chunk(pcm(0.1, sample_rate=16000)))[0] == "response"
    await client.close()
