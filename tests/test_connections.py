"""Spectator sockets are accounted for exactly, however they leave (issue 8, section 3).

A real daphne on this leg's database and channel layer, raw sockets that leave cleanly,
with a TCP reset, or in the middle of a burst of events the server is writing to them;
and a worker killed outright, whose sockets age out. `spectators` returns to 0 every time.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import itertools
import signal
import threading
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.parley_server import FuzzServer, running_server
from tests.support.rawws import RawWebSocket
from tests.support.servers import DaphneProcess

pytestmark = pytest.mark.timeout(120)

TENTH = b"\x01\x02" * 2400  # 0.1 s at 24 kHz mono 16-bit
BIG = b"\x01\x02" * 350_000  # 14.6 s: its audio_chunk event is just under daphne's 1 MiB


@pytest.fixture(scope="module")
def server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False, extra_env={"PARLEY_SPECTATOR_STALE_S": "3"}) as s:
        yield s


def spectators(base_url: str, room: str) -> int:
    response = httpx.get(f"{base_url}/api/rooms/{room}", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["spectators"]


def wait_for_spectators(base_url: str, room: str, expected: int, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        count = spectators(base_url, room)
        if count == expected or time.monotonic() > deadline:
            return count
        time.sleep(0.2)


def burst(base_url: str, room: str, stop: threading.Event) -> int:
    """POST one stream's chunks into `room` as fast as the server takes them, until `stop`:
    a steady flow of events for every socket there. Returns how many chunks were taken."""
    stream = f"{room}-{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for seq in itertools.count():
            body = {
                "stream_id": stream,
                "seq": seq,
                "room": room,
                "speaker": f"burst-{room}",
                "data": base64.b64encode(TENTH).decode(),
                "done": stop.is_set(),
            }
            response = client.post("/audio", json=body)
            assert response.status_code == 200, response.text
            if body["done"]:
                return seq + 1
    raise AssertionError("unreachable")


@contextlib.contextmanager
def bursting(base_url: str, room: str) -> Iterator[None]:
    stop = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        poster = pool.submit(burst, base_url, room, stop)
        try:
            yield
        finally:
            stop.set()
        assert poster.result(60) > 0


def open_spectators(port: int, room: str, count: int) -> list[RawWebSocket]:
    sockets = []
    for _ in range(count):
        ws = RawWebSocket(port, f"/spectate/ws?room={room}")
        assert ws.recv_json()["type"] == "state"
        sockets.append(ws)
    return sockets


def test_sockets_closing_while_the_server_writes_to_them_are_not_counted(server):
    """A client's close frame closes daphne's protocol at once, but the connection ends
    only when what was queued for the client is written. Events sent in between raised
    "send on a closed protocol" in the consumer, which died without running its leave: 5 of
    5 sockets stayed counted for ever. Here megabytes of audio wait for clients that stopped
    reading, they send a close frame, more events come, and only then do they go."""
    room = "leak-midsend"
    sockets = [
        RawWebSocket(server.daphne.port, f"/spectate/ws?room={room}", receive_buffer=4096)
        for _ in range(5)
    ]
    for ws in sockets:
        assert ws.recv_json()["type"] == "state"
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def post(seq: int) -> None:
            body = {"stream_id": "midsend", "seq": seq, "room": room, "speaker": "big"}
            body |= {"data": base64.b64encode(BIG).decode(), "done": seq == 7}
            response = client.post("/audio", json=body)
            assert response.status_code == 200, response.text

        for seq in range(6):  # more than the kernel's buffers hold: daphne keeps the rest
            post(seq)
        time.sleep(1)
        for ws in sockets:
            ws.send_close(1000)
        time.sleep(0.5)
        post(6)
        post(7)
        time.sleep(1)
        for ws in sockets:
            ws.reset()
    assert wait_for_spectators(server.url, room, 0) == 0
    assert "closed protocol" not in server.daphne.log()


def test_sockets_reset_during_a_burst_are_not_counted(server):
    room = "leak-reset"
    sockets = open_spectators(server.daphne.port, room, 30)
    assert wait_for_spectators(server.url, room, 30) == 30
    with bursting(server.url, room):
        for ws in sockets:
            ws.recv_frame(timeout=20)
            ws.reset()  # no close frame, no FIN
    assert wait_for_spectators(server.url, room, 0) == 0


def test_clean_closes_are_not_counted(server):
    room = "leak-clean"
    sockets = open_spectators(server.daphne.port, room, 10)
    assert wait_for_spectators(server.url, room, 10) == 10
    for ws in sockets:
        ws.send_close(1000)
        _, code = ws.until_close(timeout=10)
        assert code == 1000
        ws.close()
    assert wait_for_spectators(server.url, room, 0, timeout=10) == 0


def test_a_killed_workers_spectators_age_out(server):
    """SIGKILL: the worker's sockets cannot leave, so the live worker's sweeper drops them
    once they miss PARLEY_SPECTATOR_STALE_S of heartbeats."""
    room = "leak-killed"
    doomed = DaphneProcess(env=server.env, name="daphne-doomed")
    try:
        sockets = open_spectators(doomed.port, room, 5)
        assert wait_for_spectators(server.url, room, 5) == 5
        doomed.kill(signal.SIGKILL)
    finally:
        doomed.stop()
    for ws in sockets:
        ws.close()
    assert wait_for_spectators(server.url, room, 0, timeout=20) == 0
