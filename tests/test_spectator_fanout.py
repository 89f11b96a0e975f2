"""Fan-out through the real server (issue 11 §1): pre-built frames written to each socket.

The fast path (config/server.py's "parley.frames" extension) exists only under the server
bin/serve runs, so these tests start one (`python -m config.server`) on this leg's database
and channel layer, with a small PARLEY_SPECTATOR_BUFFER_BYTES so a client that stops reading
is dropped soon: every spectator gets every event once and in order, a reconnect with
`after=` continues without gap or duplicate, and a client that does not read is closed with
4429 and the id to resume after, without holding the others back.
"""

from __future__ import annotations

import base64
import concurrent.futures
import itertools
import json
import struct
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.parley_server import FuzzServer, running_server
from tests.support.rawws import CLOSE, RawWebSocket

pytestmark = pytest.mark.timeout(180)

BUFFER_CAP = 64 * 1024
TWENTY_MS = b"\x01\x02" * 480  # 24 kHz 16-bit mono


@pytest.fixture(scope="module")
def server() -> Iterator[FuzzServer]:
    with running_server(
        require_auth=False, extra_env={"PARLEY_SPECTATOR_BUFFER_BYTES": str(BUFFER_CAP)}
    ) as s:
        yield s


def post_chunks(
    server: FuzzServer, room: str, seqs: range, data: bytes = TWENTY_MS, stream: str = "s"
) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for seq in seqs:
            body = {
                "stream_id": f"{room}-{stream}",
                "seq": seq,
                "room": room,
                "speaker": "speaker",
                "data": base64.b64encode(data).decode(),
                "done": False,
            }
            response = client.post("/audio", json=body)
            assert response.status_code == 200, response.text


def read_chunks(ws: RawWebSocket, count: int, timeout: float = 60) -> list[dict]:
    """Messages until `count` audio_chunk events have arrived (all messages returned)."""
    deadline = time.monotonic() + timeout
    seen: list[dict] = []
    while sum(1 for m in seen if m["type"] == "audio_chunk") < count:
        seen.append(ws.recv_json(timeout=max(0.1, deadline - time.monotonic())))
    return seen


def assert_in_order_once(messages: list[dict]) -> None:
    ids = [m["id"] for m in messages]
    assert ids == sorted(ids) and len(set(ids)) == len(ids), ids
    assert all(b == a + 1 for a, b in itertools.pairwise(ids)), f"gap in {ids}"


def test_every_spectator_gets_every_event_once_in_order(server: FuzzServer) -> None:
    room = f"fan-{uuid.uuid4().hex[:8]}"
    sockets = [RawWebSocket(server.daphne.port, f"/spectate/ws?room={room}") for _ in range(20)]
    try:
        states = [ws.recv_json(timeout=30) for ws in sockets]
        assert all(s["type"] == "state" for s in states)
        post_chunks(server, room, range(40))
        for ws in sockets:
            messages = read_chunks(ws, 40)
            assert_in_order_once([states[0], *messages])
            chunks = [m for m in messages if m["type"] == "audio_chunk"]
            assert [c["seq"] for c in chunks] == list(range(40))
            assert base64.b64decode(chunks[-1]["data"]) == TWENTY_MS
    finally:
        for ws in sockets:
            ws.close()


def test_a_reconnect_with_after_continues_without_gap_or_duplicate(server: FuzzServer) -> None:
    room = f"fan-{uuid.uuid4().hex[:8]}"
    path = f"/spectate/ws?room={room}"
    with RawWebSocket(server.daphne.port, path) as first:
        state = first.recv_json(timeout=30)
        post_chunks(server, room, range(10))
        before = [state, *read_chunks(first, 10)]
    last = before[-1]["id"]
    post_chunks(server, room, range(10, 20))  # while away
    with RawWebSocket(server.daphne.port, f"{path}&after={last}") as again:
        missed = read_chunks(again, 10)
        post_chunks(server, room, range(20, 25))  # live again
        live = read_chunks(again, 5)
    everything = [*before, *missed, *live]
    assert_in_order_once(everything)
    chunks = [m["seq"] for m in everything if m["type"] == "audio_chunk"]
    assert chunks == list(range(25))


def test_a_client_that_stops_reading_is_dropped_to_resume_and_slows_no_one(
    server: FuzzServer,
) -> None:
    room = f"fan-{uuid.uuid4().hex[:8]}"
    path = f"/spectate/ws?room={room}"
    big = bytes(range(256)) * 1024  # 256 KiB of audio: a 350 KB message
    count = 40  # ~14 MB: past the kernel's buffers and BUFFER_CAP for a client not reading
    reader = RawWebSocket(server.daphne.port, path)
    slow = RawWebSocket(server.daphne.port, path, receive_buffer=4096)
    try:
        reader.recv_json(timeout=30)
        state = slow.recv_json(timeout=30)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            # The reading client reads as the chunks come, the other reads nothing.
            reading = pool.submit(read_chunks, reader, count, 120)
            post_chunks(server, room, range(count), data=big)
            messages = reading.result()
        assert [m["seq"] for m in messages if m["type"] == "audio_chunk"] == list(range(count))
        # The slow one: what was written before the drop, then 4429 naming the last id.
        got: list[dict] = [state]
        deadline = time.monotonic() + 60
        while True:
            opcode, payload = slow.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
            if opcode == CLOSE:
                break
            got.append(json.loads(payload))
        code = struct.unpack("!H", payload[:2])[0]
        reason = payload[2:].decode()
        assert code == 4429, (code, reason)
        assert reason == f"too_slow: resume with after={got[-1]['id']}", reason
        assert_in_order_once(got)
        had = [m["seq"] for m in got if m["type"] == "audio_chunk"]
        assert len(had) < count, "dropped only after the cap was passed"
    finally:
        reader.close()
        slow.close()
    # Resuming where the close said gets the rest: nothing lost, nothing twice.
    with RawWebSocket(server.daphne.port, f"{path}&after={got[-1]['id']}") as again:
        rest = read_chunks(again, count - len(had), timeout=120)
    everything = [*got, *rest]
    assert_in_order_once(everything)
    assert [m["seq"] for m in everything if m["type"] == "audio_chunk"] == list(range(count))
