"""PostgreSQL restarted mid-stream: while it is away every request to either worker answers
a clean 503 with `Retry-After` (never a 500, never a hang), nothing acknowledged is lost, and the
service comes back by itself: the producer's retries finish the stream and it is released
exactly once, and so is a turn whose release fell due while the database was away."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.faults.clients import Answer, chunk_body, parse_ts, post, tenth

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

CHUNKS = 40
DOWN_AT = 10  # the seq before which PostgreSQL goes down
OUTAGE_S = 2.0
# Generous for a loaded CI machine: a refusal must come, not hang (a request may wait up
# to the pool's PARLEY_DB_POOL_TIMEOUT_S, 10 s, for a connection; the outage is shorter).
ANSWER_BOUND_S = 10.0
BACK_BOUND_S = 10.0  # from PostgreSQL's return to the first acknowledgement


async def produce(client: httpx.AsyncClient, urls: list[str], pg_down: asyncio.Event):
    """A real-time producer that honours 503 + Retry-After: it retries the same chunk (on
    the other worker) until acknowledged. Returns the acknowledged chunks and every answer
    with the wall-clock moment it came."""
    acked: dict[int, bytes] = {}
    answers: list[tuple[float, str, Answer]] = []
    start = time.monotonic()
    attempt = 0
    for seq in range(CHUNKS):
        if seq == DOWN_AT:
            pg_down.set()
            await asyncio.sleep(0.3)  # the restart has begun
        await asyncio.sleep(start + seq * 0.1 - 0.3 - time.monotonic())
        data = tenth(seq)
        body = chunk_body("pg-s", seq, "pg", data=data, done=seq == CHUNKS - 1, text="pg")
        while True:
            url = urls[attempt % 2]
            answer = await post(client, url, body)
            attempt += 1
            assert answer is not None, (seq, "connection failed: the worker died")
            answers.append((time.monotonic(), url, answer))
            if answer.status == 200:
                acked[seq] = data
                break
            assert answer.status == 503, (seq, answer)
            await asyncio.sleep(min(float(answer.retry_after or 1), 0.5))
    return acked, answers


async def probe(client: httpx.AsyncClient, url: str, probes: list) -> None:
    """One read and one write of another room, side by side with the producer."""
    for request in (
        client.get(f"{url}/api/rooms/probe/events?after=0"),
        client.post(
            f"{url}/audio",
            json=chunk_body(f"probe-{url[-5:]}", 0, url[-5:], data=tenth(0), done=True),
        ),
    ):
        started = time.monotonic()
        try:
            response = await request
        except httpx.TransportError as exc:
            probes.append((url, None, repr(exc), None, time.monotonic() - started))
            continue
        probes.append(
            (
                url,
                response.status_code,
                response.headers.get("retry-after"),
                response.json(),
                time.monotonic() - started,
            )
        )


async def test_postgres_restarted_mid_stream(deployment):
    a, b = deployment.start(2)
    pg_down = asyncio.Event()

    probes: list[tuple] = []

    async def outage() -> float:
        await pg_down.wait()
        await asyncio.to_thread(deployment.postgres.shut_down)
        # Every 0.25 s while the database is away, a read and a write to each worker.
        probing = [asyncio.create_task(probe(client, url, probes)) for url in (a.url, b.url)]
        for _ in range(int(OUTAGE_S / 0.25)):
            await asyncio.sleep(0.25)
            probing += [asyncio.create_task(probe(client, url, probes)) for url in (a.url, b.url)]
        await asyncio.to_thread(deployment.postgres.restart)
        await asyncio.gather(*probing)
        return time.monotonic()

    async with httpx.AsyncClient(timeout=30) as client:
        # A whole utterance in one chunk, due to end while PostgreSQL is down.
        due = chunk_body("due-s", 0, "due", data=tenth(0, 10), done=True)
        answer = await post(client, a.url, due)
        assert answer is not None and answer.status == 200, answer
        due_at = parse_ts(answer.body["playback_ends_at"])
        outage_task = asyncio.create_task(outage())
        acked, answers = await produce(client, [a.url, b.url], pg_down)
        back_at = await outage_task
        back_wall = time.time() - (time.monotonic() - back_at)
        assert due_at.timestamp() < back_wall, "the release fell due during the outage"

        # Clean refusals: 503 + Retry-After in the error shape, from both workers, or a
        # success once the database is back. Nothing else, and never a hang.
        assert {url for url, status, *_ in probes if status == 503} == {a.url, b.url}, probes
        seen = [(status, retry, body) for _, status, retry, body, _ in probes]
        seen += [(x.status, x.retry_after, x.body) for _, _, x in answers if x.status != 200]
        for status, retry_after, body in seen:
            if status in (200, 404):  # 404: the probe room has no events yet (db back)
                continue
            assert status == 503, (status, body)
            assert retry_after is not None and int(retry_after) > 0, (status, retry_after)
            assert set(body) >= {"error", "detail", "field"}, body
        slowest_probe = max(elapsed for *_, elapsed in probes)
        assert slowest_probe < ANSWER_BOUND_S, f"a probe took {slowest_probe:.1f} s"
        slowest = max(answer.elapsed_s for _, _, answer in answers)
        assert slowest < ANSWER_BOUND_S, f"an answer took {slowest:.1f} s"
        first_ack_after = min(t for t, _, answer in answers if t > back_at and answer.status == 200)
        assert first_ack_after - back_at < BACK_BOUND_S

        # Nothing acknowledged lost: in the database, and in the stream's audio.
        assert sorted(acked) == list(range(CHUNKS))
        stored = deployment.query(
            "SELECT c.seq, c.data FROM streams_chunk c JOIN streams_stream s "
            "ON s.id = c.stream_id WHERE s.stream_id = 'pg-s' ORDER BY c.seq"
        )
        assert {seq: bytes(data) for seq, data in stored} == acked
        wav = await client.get(f"{b.url}/api/streams/pg-s/audio.wav")
        assert wav.status_code == 200, wav.text
        assert wav.content.endswith(b"".join(acked[seq] for seq in range(CHUNKS)))

    deadline = time.monotonic() + 15
    query = (
        "SELECT r.name, t.status, t.release_at, (SELECT count(*) FROM streams_roomevent e "
        "WHERE e.room_id = t.room_id AND e.type = 'playback_done'), (SELECT min(created_at) "
        "FROM streams_roomevent e WHERE e.room_id = t.room_id AND e.type = 'playback_done') "
        "FROM streams_turn t JOIN streams_room r ON r.id = t.room_id "
        "WHERE r.name IN ('due', 'pg') ORDER BY r.name"
    )
    while time.monotonic() < deadline:
        rows = deployment.query(query)
        if all(status == "released" for _, status, *_ in rows):
            break
        await asyncio.sleep(0.1)
    assert [(name, status, count) for name, status, _, count, _ in rows] == [
        ("due", "released", 1),
        ("pg", "released", 1),
    ], rows
    for _, _, release_at, _, done_at in rows:
        assert done_at >= release_at, "never early"
    # The turn that fell due in the outage: released soon after the database came back
    # (by a sweep, or by a standby that re-armed every finalized turn when it reconnected).
    assert rows[0][4].timestamp() - back_wall < BACK_BOUND_S, rows[0]
    # Every process is still the one started: none died of the outage.
    assert all(process.running for process in deployment.processes)
