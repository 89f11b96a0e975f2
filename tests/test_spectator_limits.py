"""What a legal request can make, a spectator can receive (issue 8, sections 1 and 3).

A real server (`python -m config.server`) on this leg's database and channel layer: the
largest chunk POST /audio accepts reaches every spectator whole, and a text frame that is
not UTF-8 is closed with 1007, not dropped.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from tests.support.parley_server import FuzzServer, running_server
from tests.support.rawws import CLOSE, RawWebSocket, close_code

pytestmark = pytest.mark.timeout(120)

MAX_CHUNK = 1024 * 1024  # PARLEY_MAX_CHUNK_BYTES's default, the server's


@pytest.fixture(scope="module")
def server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False) as s:
        yield s


def test_a_max_size_chunk_reaches_a_spectator_whole(server: FuzzServer) -> None:
    room = f"big-{uuid.uuid4().hex[:8]}"
    audio = bytes(range(256)) * (MAX_CHUNK // 256)
    with RawWebSocket(server.daphne.port, f"/spectate/ws?room={room}", timeout=30) as ws:
        state = ws.recv_json(timeout=30)
        assert state["type"] == "state", state
        body = {
            "stream_id": f"{room}-s",
            "seq": 0,
            "room": room,
            "speaker": "speaker",
            "data": base64.b64encode(audio).decode(),
            "done": True,
        }
        response = httpx.post(f"{server.url}/audio", json=body, timeout=60)
        assert response.status_code == 200, response.text
        deadline = time.monotonic() + 60
        while True:
            # Pings are answered inside recv_frame; the deadline bounds the whole wait.
            opcode, payload = ws.recv_frame(timeout=max(0.1, deadline - time.monotonic()))
            assert opcode != CLOSE, f"closed: {close_code(payload)}"
            message = json.loads(payload)
            if message["type"] == "audio_chunk":
                break
        assert base64.b64decode(message["data"]) == audio
        # Still connected and served: what it sends is answered (its playback lasts 21 s).
        ws.send_text("hello")
        answer = ws.recv_json(timeout=30)
        assert answer["type"] == "error" and answer["error"] == "read_only", answer
        assert answer["id"] == message["id"], answer


@pytest.mark.parametrize("path", ["/spectate/ws?room=utf8", "/ws/agent"])
def test_a_text_frame_of_invalid_utf8_is_closed_with_1007(server: FuzzServer, path: str) -> None:
    with RawWebSocket(server.daphne.port, path, timeout=30) as ws:
        ws.send_text(b'{"type": "\xff\xfe"}')
        _, code = ws.until_close(timeout=30)
        assert code == 1007  # not a dropped connection (None)
