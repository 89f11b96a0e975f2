"""Recording sockets under abuse, against a real daphne (issue 8, section 3).

Malformed Socket.IO packets are anyone's to send, unauthenticated: each costs one WARNING
line and ends its connection, never an ERROR traceback (a log flood) or a hanging client.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.parley_server import FuzzServer, _manage, running_server
from tests.support.rawws import CLOSE, RawWebSocket

pytestmark = pytest.mark.timeout(120)

SOCKETIO = "/socket.io/?EIO=4&transport=websocket"


@pytest.fixture(scope="module")
def server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False) as s:
        yield s


def socketio_connected(port: int) -> RawWebSocket:
    ws = RawWebSocket(port, SOCKETIO)
    _, opening = ws.recv_frame(10)
    assert opening.startswith(b"0{"), opening
    ws.send_text("40/streaming,")
    _, connected = ws.recv_frame(10)
    assert connected.startswith(b"40/streaming,"), connected
    return ws


def ended(ws: RawWebSocket, timeout: float = 10.0) -> list[bytes]:
    """Frames until the server ends the session (a Socket.IO disconnect of the namespace,
    an Engine.IO close packet, a WebSocket close or EOF); fails if it does not within
    `timeout`."""
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            opcode, payload = ws.recv_frame(max(0.1, deadline - time.monotonic()))
        except TimeoutError:
            break
        except (ConnectionError, OSError):
            return seen
        if opcode == CLOSE or payload == b"1" or payload.startswith(b"41/streaming"):
            return seen
        seen.append(payload)
    raise AssertionError(f"the connection was not ended: {seen}")


@pytest.mark.parametrize(
    "packet",
    [
        '42/streaming,["audio_chunk",',  # JSON cut short
        "4X",  # no such Socket.IO packet type
        '45-/streaming,["audio_chunk",{"_placeholder":true,"num":0}]',  # digits missing
        '42/streaming,{"event":',
    ],
)
def test_a_malformed_socketio_packet_is_one_warning_and_a_disconnect(server, packet):
    ws = socketio_connected(server.daphne.port)
    ws.send_text(packet)
    frames = ended(ws)
    ws.close()
    errors = [
        json.loads(frame.removeprefix(b"42/streaming,"))
        for frame in frames
        if frame.startswith(b'42/streaming,["error"')
    ]
    assert errors and errors[-1][1]["error"] == "malformed_packet", frames
    time.sleep(0.3)
    log = server.daphne.log()
    assert "Traceback" not in log and "handler error" not in log, log[-3000:]
    assert "malformed packet" in log


def recordings_count(base_url: str) -> int:
    response = httpx.get(f"{base_url}/api/recordings", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["count"]


def test_a_churn_of_connections_without_audio_leaves_no_record(server):
    """The dev default takes connections without a key: each used to leave an empty
    recording row behind (3,010 after a churn)."""
    before = recordings_count(server.url)
    for n in range(30):
        ws = RawWebSocket(server.daphne.port, "/ws/streaming")
        assert json.loads(ws.recv_frame(10)[1])["event"] == "response"
        if n % 2:
            ws.reset()
        else:
            ws.send_close(1000)
            ws.until_close(10)
            ws.close()
    for n in range(10):
        ws = socketio_connected(server.daphne.port)
        if n % 2:
            ws.reset()
        else:
            ws.send_text("41/streaming,")
            ws.close()
    deadline = time.monotonic() + 10
    while recordings_count(server.url) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert recordings_count(server.url) == before


@pytest.fixture(scope="module")
def auth_server() -> Iterator[FuzzServer]:
    with running_server(require_auth=True) as s:
        yield s


def test_revoking_a_key_ends_its_open_sessions_within_5_s(auth_server):
    env = auth_server.env
    ws_key = _manage(env, "create_api_key", "revoked-ws")
    sio_key = _manage(env, "create_api_key", "revoked-sio")
    ws = RawWebSocket(auth_server.daphne.port, f"/ws/streaming?api_key={ws_key}")
    assert json.loads(ws.recv_frame(10)[1])["event"] == "response"
    ws.send_binary(b"\x01\x02" * 1600)  # 0.1 s at the default 16 kHz mono 16-bit
    assert json.loads(ws.recv_frame(10)[1])["data"] == {"message": "received chunk"}
    sio = RawWebSocket(auth_server.daphne.port, SOCKETIO)
    sio.recv_frame(10)
    sio.send_text("40/streaming," + json.dumps({"api_key": sio_key}))
    assert sio.recv_frame(10)[1].startswith(b"40/streaming,")

    # Sessions whose key stays valid go on (the check runs every second).
    time.sleep(2.5)
    ws.send_binary(b"\x01\x02" * 1600)
    assert json.loads(ws.recv_frame(10)[1])["data"] == {"message": "received chunk"}
    sio.send_text('42/streaming,["nope"]')
    while b'"response"' in (answer := sio.recv_frame(10)[1]):
        pass  # the greeting
    assert b"unknown_event" in answer

    _manage(
        env,
        "shell",
        "-c",
        "from django.utils import timezone; from streams.models import ApiKey; "
        "ApiKey.objects.filter(speaker__startswith='revoked-').update(revoked_at=timezone.now())",
    )
    revoked_at = time.monotonic()
    frames, code = ws.until_close(timeout=10)
    events = [json.loads(payload) for _, payload in frames]
    errors = [e["data"] for e in events if e["event"] == "error"]
    assert errors and errors[-1]["error"] == "invalid_api_key", events
    assert errors[-1]["field"] == "Authorization"
    assert "result_file_path" in [e["event"] for e in events]  # what it recorded is saved
    assert code is not None
    sio_frames = ended(sio)
    assert any(b'"invalid_api_key"' in frame for frame in sio_frames), sio_frames
    assert time.monotonic() - revoked_at < 5.0
    ws.close()
    sio.close()
