"""Redis SIGKILLed and restarted mid-stream: nothing acknowledged is lost, and every
spectator is complete within seconds of Redis's return — also when the stream ended (and
its turn was released) while Redis was away, so no later event would nudge anyone."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.faults.clients import Spectator, chunk_body, post, tenth

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

# The issue asks for 1 s; a loaded 2-core CI machine gets a few (bench/ is for tight bounds).
CATCH_UP_S = 5.0
OUTAGE_S = 3.0


async def produce(
    client: httpx.AsyncClient,
    urls: list[str],
    room: str,
    chunks: int,
    *,
    kill_at: int | None = None,
    redis_down: asyncio.Event,
) -> dict[int, bytes]:
    """A real-time producer (0.3 s ahead) posting alternately to both workers; Redis dies
    before seq `kill_at`. Returns the acknowledged chunks."""
    acked: dict[int, bytes] = {}
    start = time.monotonic()
    for seq in range(chunks):
        if seq == kill_at:
            redis_down.set()
            await asyncio.sleep(0.05)
        await asyncio.sleep(start + seq * 0.1 - 0.3 - time.monotonic())
        data = tenth(seq)
        body = chunk_body(f"{room}-s", seq, room, data=data, done=seq == chunks - 1, text=room)
        answer = await post(client, urls[seq % 2], body)
        assert answer is not None, (room, seq, "connection failed")
        # Redis is only the broadcast: the database takes the chunk whatever Redis does.
        assert answer.status == 200, (room, seq, answer)
        acked[seq] = data
    return acked


async def test_redis_killed_and_restarted_mid_stream(deployment):
    a, b = deployment.start(2)
    # "ends": the stream ends, and its turn is released, while Redis is down (2.4 s of
    # audio, Redis dies 0.4 s in, for 3 s). "spans": the stream goes on after Redis is back.
    rooms = {"ends": 24, "spans": 50}
    spectators = [
        Spectator(worker.ws_url, room) for room in rooms for worker in (a, b) for _ in range(2)
    ]
    await asyncio.gather(*(s.start() for s in spectators))
    redis_down = asyncio.Event()

    async def outage() -> float:
        await redis_down.wait()
        deployment.redis.kill()
        await asyncio.sleep(OUTAGE_S)
        await asyncio.to_thread(deployment.redis.restart)
        return time.monotonic()

    async with httpx.AsyncClient(timeout=30) as client:
        outage_task = asyncio.create_task(outage())
        acked_by_room = await asyncio.gather(
            *(
                produce(
                    client,
                    [a.url, b.url],
                    room,
                    chunks,
                    kill_at=4 if room == "ends" else None,
                    redis_down=redis_down,
                )
                for room, chunks in rooms.items()
            )
        )
        back_at = await outage_task

        # Nothing acknowledged lost: in the database, and in the stream's audio.
        for room, acked in zip(rooms, acked_by_room, strict=True):
            stored = deployment.query(
                "SELECT c.seq, c.data FROM streams_chunk c JOIN streams_stream s "
                "ON s.id = c.stream_id WHERE s.stream_id = %s ORDER BY c.seq",
                f"{room}-s",
            )
            assert {seq: bytes(data) for seq, data in stored} == acked, room
            wav = await client.get(f"{a.url}/api/streams/{room}-s/audio.wav")
            assert wav.status_code == 200, wav.text
            assert wav.content.endswith(b"".join(acked[seq] for seq in sorted(acked))), room

    # Every turn released exactly once (the release needs no Redis).
    await _wait_released(deployment, len(rooms))
    # Every spectator complete: every event of its room after its first `state`, each once.
    last_ids = dict(
        deployment.query(
            "SELECT r.name, r.last_event_id FROM streams_room r WHERE r.name = ANY(%s)",
            list(rooms),
        )
    )
    deadline = back_at + CATCH_UP_S
    late = []
    for spectator in spectators:
        target = last_ids[spectator.room]
        while spectator.last_id < target and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        if spectator.last_id < target:
            late.append((spectator.base_url, spectator.room, spectator.last_id, target))
    for spectator in spectators:
        await spectator.stop()
    assert not late, f"spectators incomplete {CATCH_UP_S} s after Redis came back: {late}"
    for spectator in spectators:
        first_state = spectator.messages[0]
        assert first_state["type"] == "state"
        ids = [m["id"] for m in spectator.messages[1:] if m["id"] > first_state["id"]]
        target = last_ids[spectator.room]
        assert ids == list(range(first_state["id"] + 1, target + 1)), (
            spectator.room,
            "every event once, in order",
        )
        chunks = spectator.chunks(f"{spectator.room}-s")
        assert [c["seq"] for c in chunks] == list(range(rooms[spectator.room])), spectator.room
        assert len(spectator.of_type("playback_done")) == 1, spectator.room


async def _wait_released(deployment, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = deployment.query(
            "SELECT t.status, count(e.id) FROM streams_turn t LEFT JOIN streams_roomevent e "
            "ON e.room_id = t.room_id AND e.type = 'playback_done' GROUP BY t.id, t.status"
        )
        if len(rows) == count and all(status == "released" for status, _ in rows):
            assert all(n == 1 for _, n in rows), f"released more than once: {rows}"
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"turns not released: {rows}")
