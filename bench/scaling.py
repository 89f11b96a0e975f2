"""Capacities of each part of the deployment, measured for docs/scaling.md (issue 11 §4).

    .venv/bin/python -m bench.scaling                       # both backends, about 2 minutes
    .venv/bin/python -m bench.scaling --backends postgres --seconds 5

What it measures, each on a fresh database (bench.core's backend_env) and without HTTP, so
the numbers are the part's own ceiling, not the web server's:

1. room     events/s one room can take: one speaker's chunks through `chunk_ingest`, one
            transaction each (the room row lock held for each), then in groups of 16
            (`chunk_ingest_group`, what WS /ws/audio does), then four rooms at once (four
            tasks, each its own room) to show what the lock serializes and what it does not.
            Driven from one asyncio loop through the runtime's database executor, with the
            publisher running: each chunk's event reaches the channel layer.
2. layer    messages/s through the channel layer: `group_send` of a 6.5 kB room event (a
            10 ms chunk's `audio_chunk` as JSON) to a group with one member channel that
            receives them, in the same process.
3. redis    Redis's own ceiling for the same payload (`redis-benchmark PUBLISH`, 4 clients,
            without and with pipelining): the yardstick of (2).
4. pg       PostgreSQL's own ceiling for the chunk table's write (`pgbench`, a 4,800-byte
            bytea row per statement, 1 and 4 clients, a commit per row and per 16 rows).

Results: printed as a table, and with --json as data. docs/scaling.md quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.core import backend_env, machine_info, python_speed
from tests.support.servers import PROJECT_ROOT, postgres_url, redis_url

CHUNK_BYTES = 480 * 10  # 100 ms of 24 kHz 16-bit mono: the wrk/ingest chunk of bench.core
GROUP = 16
STREAM_CHUNKS = 4096  # chunks per stream (a multiple of GROUP; 19.7 MB of audio)


# --- inner: runs inside a Django process of one backend --------------------------------------


async def _room_rate(
    rooms: int, seconds: float, group: int, tag: str
) -> tuple[float, int]:  # (events/s, events)
    from streams.audio import PcmFormat
    from streams.runtime import runtime
    from streams.services import ChunkIn, chunk_ingest, chunk_ingest_group

    fmt = PcmFormat()
    data = bytes(CHUNK_BYTES)
    deadline = time.perf_counter() + seconds
    counts = [0] * rooms

    async def speaker(index: int) -> None:
        seq = 0
        while time.perf_counter() < deadline:
            # A fresh room every STREAM_CHUNKS chunks: a stream may not pass
            # PARLEY_MAX_STREAM_BYTES, and its room's floor stays with it.
            room = f"scale-{tag}-{index}-{seq // STREAM_CHUNKS}"
            first = seq % STREAM_CHUNKS
            chunks = [
                ChunkIn(room, "bench", f"{room}-s", first + i, data, False, "", fmt)
                for i in range(group)
            ]
            if group == 1:
                await runtime.run_db(chunk_ingest, chunks[0])
            else:
                answers = await runtime.run_db(chunk_ingest_group, chunks)
                bad = [a for a in answers if not isinstance(a, dict)]
                if bad:
                    raise RuntimeError(f"refused: {bad[0]!r}")
            seq += group
            counts[index] += group

    started = time.perf_counter()
    await asyncio.gather(*(speaker(i) for i in range(rooms)))
    elapsed = time.perf_counter() - started
    return sum(counts) / elapsed, sum(counts)


async def _layer_rate(seconds: float) -> dict[str, Any]:
    import base64

    from channels.layers import get_channel_layer

    layer = get_channel_layer()
    channel = await layer.new_channel()
    await layer.group_add("scale-layer", channel)
    event = {
        "type": "room.events",
        "text": json.dumps(
            {"type": "audio_chunk", "data": base64.b64encode(bytes(CHUNK_BYTES)).decode()}
        ),
    }
    size = len(event["text"])
    received = 0
    stop = asyncio.Event()

    async def receiver() -> None:
        nonlocal received
        while not stop.is_set():
            try:
                await asyncio.wait_for(layer.receive(channel), 1.0)
            except TimeoutError:
                continue
            received += 1

    task = asyncio.create_task(receiver())
    await asyncio.sleep(0.2)
    sent = 0
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        await layer.group_send("scale-layer", event)
        sent += 1
        if sent - received > 500:  # stay within the receiver's buffer: measure, not drop
            await asyncio.sleep(0.001)
    # Let the receiver drain what is in flight (polled: the count is the receiver's own).
    drain_until = time.perf_counter() + 2.0
    while received < sent and time.perf_counter() < drain_until:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    await task
    await layer.group_discard("scale-layer", channel)
    return {
        "layer": f"{type(layer).__module__}.{type(layer).__name__}",
        "payload_bytes": size,
        "sent": sent,
        "received": received,
        "msgs_per_s": received / elapsed,
    }


async def _inner_main(seconds: float) -> dict[str, Any]:
    from django.db import connection

    from streams.runtime import runtime

    runtime.ensure_started(sweeper=False)
    out: dict[str, Any] = {"vendor": connection.vendor}
    rate, n = await _room_rate(1, seconds, 1, "one")
    out["room_one_by_one"] = {"events_per_s": rate, "events": n}
    rate, n = await _room_rate(1, seconds, GROUP, "group")
    out["room_groups"] = {"events_per_s": rate, "events": n, "group": GROUP}
    rate, n = await _room_rate(4, seconds, 1, "four")
    out["four_rooms_one_by_one"] = {"events_per_s": rate, "events": n}
    out["layer"] = await _layer_rate(seconds)
    return out


def inner(seconds: float) -> None:
    import django

    django.setup()
    result = asyncio.run(_inner_main(seconds))
    print("RESULT " + json.dumps(result), flush=True)


# --- outer: backends, redis-benchmark, pgbench -----------------------------------------------


def run_inner(env: dict[str, str | None], seconds: float) -> dict[str, Any]:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.scaling", "--inner", "--seconds", str(seconds)],
        cwd=PROJECT_ROOT,
        env=merged,
        capture_output=True,
        text=True,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"inner run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


def redis_publish(url: str, seconds: float) -> dict[str, Any]:
    """redis-benchmark PUBLISH of a room-event-sized payload: Redis's own ceiling."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    payload = "x" * 6500
    out: dict[str, Any] = {"payload_bytes": len(payload)}
    for pipeline in (1, 16):
        n = 20000 if pipeline == 1 else 100000
        proc = subprocess.run(
            [
                *("redis-benchmark", "-h", parts.hostname or "127.0.0.1"),
                *("-p", str(parts.port or 6379), "-c", "4", "-n", str(n), "-P", str(pipeline)),
                *("-q", "PUBLISH", "parley-bench-scaling", payload),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=max(60.0, seconds * 10),
        )
        found = re.findall(r"([\d.]+) requests per second", proc.stdout)
        out[f"publish_per_s_P{pipeline}"] = float(found[-1]) if found else None
    return out


PG_SET = "-- each row its own seq: the unique (stream_id, seq) index is written as Chunk's is"
PG_INSERT = (
    "INSERT INTO scaling_chunk (stream_id, seq, data)"
    " VALUES (:client_id, nextval('scaling_seq'), decode(repeat('00', {size}), 'hex'));"
)


def pg_writes(server_url: str, seconds: float) -> dict[str, Any]:
    """pgbench: rows/s of a chunk-sized bytea insert, a commit per row and per 16 rows."""
    import psycopg

    from bench.core import _with_database

    database = f"parley_scaling_{os.getpid()}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}"')
        conn.execute(f'CREATE DATABASE "{database}"')
    url = _with_database(server_url, database)
    out: dict[str, Any] = {}
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE scaling_chunk (id bigserial PRIMARY KEY, stream_id int, seq int,"
                " data bytea, UNIQUE (stream_id, seq))"
            )
            conn.execute("CREATE SEQUENCE scaling_seq")
        with tempfile.TemporaryDirectory() as tmp:
            one = Path(tmp, "one.sql")
            one.write_text(f"{PG_SET}\n{PG_INSERT.format(size=CHUNK_BYTES)}\n")
            many = Path(tmp, "many.sql")
            rows = [PG_INSERT.format(size=CHUNK_BYTES)] * GROUP
            many.write_text("\n".join([PG_SET, "BEGIN;", *rows, "COMMIT;"]) + "\n")
            for label, script, per in (("commit_per_row", one, 1), ("commit_per_16", many, GROUP)):
                for clients in (1, 4):
                    proc = subprocess.run(
                        [
                            *("pgbench", "-n", "-f", str(script), "-c", str(clients)),
                            *("-j", str(min(2, clients)), "-T", str(max(2, int(seconds))), url),
                        ],
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    tps = re.search(r"tps = ([\d.]+)", proc.stdout)
                    value = float(tps.group(1)) * per if tps else None
                    out[f"{label}_c{clients}_rows_per_s"] = value
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return out


def render(results: dict[str, Any]) -> str:
    lines = [
        f"Parley scaling inputs, {results['date']}, commit {results['machine'].get('commit', '?')}",
        f"Python speed {results['python_speed']:.1f} M loop iterations/s",
        "",
        "| part | measure | embedded (SQLite, in-memory layer) | PostgreSQL + Redis |",
        "|---|---|---|---|",
    ]
    backends = results["backends"]

    def cell(name: str, *keys: str, fmt: str = "{:,.0f}") -> str:
        value: Any = backends.get(name)
        for key in keys:
            if not isinstance(value, dict):
                return "-"
            value = value.get(key)
        return fmt.format(value) if isinstance(value, int | float) else "-"

    rows = [
        ("one room", "events/s, a transaction per chunk", ("room_one_by_one", "events_per_s")),
        ("one room", f"events/s, groups of {GROUP}", ("room_groups", "events_per_s")),
        (
            "four rooms",
            "events/s in all, a transaction per chunk",
            ("four_rooms_one_by_one", "events_per_s"),
        ),
        ("channel layer", "group_send of a 6.5 kB event, received/s", ("layer", "msgs_per_s")),
    ]
    for part, measure, keys in rows:
        lines.append(
            f"| {part} | {measure} | {cell('embedded', *keys)} | {cell('postgres', *keys)} |"
        )
    redis = results.get("redis") or {}
    pg = results.get("pg") or {}
    for pipeline in (1, 16):
        value = redis.get(f"publish_per_s_P{pipeline}")
        lines.append(
            f"| Redis | PUBLISH 6.5 kB, 4 clients, pipeline {pipeline}, per s | | {value:,.0f} |"
            if value
            else f"| Redis | PUBLISH pipeline {pipeline} | | - |"
        )
    for label, text in (
        ("commit_per_row", "a commit per row"),
        ("commit_per_16", "a commit per 16 rows"),
    ):
        for clients in (1, 4):
            value = pg.get(f"{label}_c{clients}_rows_per_s")
            shown = f"{value:,.0f}" if value else "-"
            lines.append(
                f"| PostgreSQL | 4,800-byte rows/s, {text}, {clients} client(s) | | {shown} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="embedded,postgres")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inner:
        inner(args.seconds)
        return
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine_info(),
        "python_speed": python_speed(),
        "backends": {},
    }
    for name in args.backends.split(","):
        with backend_env(name, args) as env:
            results["backends"][name] = run_inner(env, args.seconds)
        print(f"{name}: {json.dumps(results['backends'][name])}", flush=True)
    if "postgres" in args.backends:
        results["redis"] = redis_publish(args.redis_url or redis_url(), args.seconds)
        results["pg"] = pg_writes(args.database_url or postgres_url(), args.seconds)
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
