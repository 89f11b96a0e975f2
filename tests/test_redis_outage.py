"""Redis killed and restarted under a real daphne worker (issue 8, section 3).

Redis is only the fast path of a room's events; the event log is the truth. While Redis is
down, spectators keep being served from the log, new spectators connect, and the long-poll
answers; once it is back, nothing is missing, nothing is doubled, and live delivery resumes
— also when no later event comes to reveal a gap.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
import websockets

from tests.support.parley_server import FuzzServer, running_server
from tests.support.servers import KillableRedis

pytestmark = pytest.mark.timeout(120)

TENTH = b"\x01\x02" * 2400  # 0.1 s at 24 kHz mono 16-bit
ROOM = "outage"
OUTAGE_S = 4.0
CATCH_UP_S = 5.0  # generous for a loaded 2-core machine; the watchdog looks every 0.5 s


@pytest.fixture
def redis() -> Iterator[KillableRedis]:
    server = KillableRedis()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(redis: KillableRedis) -> Iterator[FuzzServer]:
    env = {"REDIS_URL": redis.url, "PARLEY_SPECTATOR_RESYNC_S": "0.5", "PARLEY_LOG_LEVEL": "INFO"}
    with running_server(require_auth=False, extra_env=env) as s:
        yield s


class Watcher:
    """A spectator socket collecting every message in the background."""

    def __init__(self, ws_url: str) -> None:
        self.url = f"{ws_url}/spectate/ws?room={ROOM}"
        self.messages: list[dict] = []
        self._task: asyncio.Task | None = None

    async def start(self) -> dict:
        self.ws = await websockets.connect(self.url, open_timeout=10)
        state = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert state["type"] == "state", state
        self.messages.append(state)
        self._task = asyncio.create_task(self._collect())
        return state

    async def _collect(self) -> None:
        async for raw in self.ws:
            self.messages.append(json.loads(raw))

    @property
    def last_id(self) -> int:
        return self.messages[-1]["id"]

    async def wait_for(self, event_id: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.last_id < event_id and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return self.last_id >= event_id

    async def stop(self) -> None:
        await self.ws.close()
        if self._task is not None:
            await asyncio.wait_for(self._task, 10)

    def assert_complete(self, last_id: int) -> None:
        """Every event after the first state up to `last_id`, each once, in order (the
        audio so far that follows a state has the ids of earlier events)."""
        first = self.messages[0]["id"]
        ids = [m["id"] for m in self.messages[1:] if m["id"] > first]
        assert ids == list(range(first + 1, last_id + 1)), [m["id"] for m in self.messages]


async def post_chunk(client: httpx.AsyncClient, seq: int, *, done: bool = False) -> None:
    body = {
        "stream_id": "outage-s",
        "seq": seq,
        "room": ROOM,
        "speaker": "speaker",
        "data": base64.b64encode(TENTH).decode(),
        "done": done,
        "speech_text": "through the outage" if done else "",
    }
    response = await client.post("/audio", json=body)
    assert response.status_code == 200, response.text


async def last_event_id(client: httpx.AsyncClient) -> int:
    response = await client.get(f"/api/rooms/{ROOM}/events", params={"after": 0, "wait": 0})
    assert response.status_code == 200, response.text
    return response.json()["last_id"]


async def test_spectators_and_long_polls_ride_out_a_redis_restart(server, redis):
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        before = Watcher(server.ws_url)
        await before.start()
        for seq in range(3):
            await post_chunk(client, seq)
        assert await before.wait_for(await last_event_id(client), CATCH_UP_S)

        redis.kill()
        down_at = time.monotonic()
        # While Redis is down: chunks are taken (the database is the truth)...
        for seq in range(3, 8):
            await post_chunk(client, seq)
        # ... a new spectator connects (the handshake needs no Redis) ...
        during = Watcher(server.ws_url)
        state = await during.start()
        assert state["id"] == await last_event_id(client)
        # ... a long-poll waiting for the next event gets it ...
        poll = asyncio.create_task(
            client.get(f"/api/rooms/{ROOM}/events", params={"after": state["id"], "wait": 10})
        )
        await asyncio.sleep(0.3)
        await post_chunk(client, 8)
        answer = await poll
        assert answer.status_code == 200, answer.text
        assert [e["id"] for e in answer.json()["events"]] == [state["id"] + 1]
        # ... and the spectators are kept up to date from the log.
        assert await before.wait_for(await last_event_id(client), CATCH_UP_S)
        assert await during.wait_for(await last_event_id(client), CATCH_UP_S)
        # (An outage of a few seconds: channels_redis alone logged a traceback a second.)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down_at)))

        # Redis is back. The next chunk's broadcast may meet a dead connection: it is sent
        # again, and no later event is needed to deliver it.
        redis.restart()
        back_at = time.monotonic()
        await post_chunk(client, 9)
        target = await last_event_id(client)
        for watcher in (before, during):
            assert await watcher.wait_for(target, CATCH_UP_S - (time.monotonic() - back_at))

        # And live delivery resumes: the end of the stream arrives as it is posted.
        after = Watcher(server.ws_url)
        await after.start()
        await asyncio.sleep(1.0)  # the new socket's room subscription is made
        for seq in range(10, 14):
            await post_chunk(client, seq, done=seq == 13)
        target = await last_event_id(client)
        for watcher in (before, during, after):
            assert await watcher.wait_for(target, CATCH_UP_S)
            await watcher.stop()
            watcher.assert_complete(target)
    for watcher in (before, during, after):
        chunks = [m["seq"] for m in watcher.messages if m["type"] == "audio_chunk"]
        assert chunks == list(range(chunks[0], 14)), chunks
    log = server.daphne.log()
    for failure in ("Exception inside application", '" 500 ', "WSREJECT"):
        assert failure not in log, log[-3000:]
    # The outage is logged as one WARNING when it starts and one INFO when Redis is back,
    # not as a traceback a second (config/channel_layer.py).
    assert "Traceback" not in log, log[-3000:]
    assert log.count("is unreachable") == 1, log[-3000:]
    assert log.count("is reachable again") == 1, log[-3000:]
