"""Aggregate ingest of two workers against one (issue 11 §3), WS /ws/audio on PostgreSQL + Redis.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.workers --seconds 5

One fresh database (bench.core's backend_env), `python -m config.server` workers started
as bench.core starts its one. Round "one": N speakers (each its own room, binary 20 ms
chunks, a window of 32 frames ahead of their acks) against one worker. Round "two": the same
N speakers split evenly over two workers. Acked chunks/s over the measured seconds, each
worker's CPU, the client's CPU and the rest of the machine's, alternating one/two for
`--rounds`. The client is this one Python process: what the machine has left for it is part
of what the ratio shows, and the output says how busy each side was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shlex
import time
from pathlib import Path
from typing import Any

from bench.core import (
    BENCH_APP,
    BYTES_PER_MS,
    CpuMeter,
    backend_env,
    log,
    ws_frames,
    ws_stream,
)
from tests.support.servers import PARLEY_SERVER, DaphneProcess


async def ingest_round(servers: list[DaphneProcess], args: argparse.Namespace) -> dict[str, Any]:
    """args.speakers speakers spread round-robin over `servers`; acked chunks/s in all."""
    token = secrets.token_hex(3)
    chunk = b"\x01\x02" * (args.chunk_ms * BYTES_PER_MS // 2)
    started = time.perf_counter()
    measure_from = started + args.warmup
    until = measure_from + args.seconds
    calls = []
    for index in range(args.speakers):
        server = servers[index % len(servers)]
        stream_id = f"wk-{token}-{index}"
        url = (
            f"{server.ws_url}/ws/audio?room=wk-{token}-{index}&speaker=bench-{index}"
            f"&stream_id={stream_id}"
        )
        calls.append(
            ws_stream(
                url,
                ws_frames("binary", stream_id, chunk),
                window=args.window,
                until=until,
                check_acks=True,
            )
        )
    meters = [CpuMeter(server.pid) for server in servers]

    async def metered() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        for meter in meters:
            meter.__enter__()
        await asyncio.sleep(max(0.0, until - time.perf_counter()))
        for meter in meters:
            meter.__exit__()

    streams, _ = await asyncio.gather(asyncio.gather(*calls), metered())
    counted = sum(1 for s in streams for t in s["answered"] if measure_from <= t < until)
    bad = [b for s in streams for b in s["bad"]]
    return {
        "workers": len(servers),
        "per_s": counted / args.seconds,
        "bad": len(bad),
        "server_cpu_pct": [meter.server_pct for meter in meters],
        "client_cpu_pct": meters[0].client_pct,
        # The first meter's "others" include the second worker, when there is one.
        "others_pct": meters[0].others_pct,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=8)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--chunk-ms", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url")
    parser.add_argument("--daphne-args", default="")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, Any]]] = {"one": [], "two": []}
    with backend_env("postgres", args) as env:
        servers = [
            DaphneProcess(
                BENCH_APP,
                env=env,
                name=f"worker-{n}",
                server=PARLEY_SERVER,
                extra_args=shlex.split(args.daphne_args),
            )
            for n in range(2)
        ]
        try:
            time.sleep(0.5)
            for round_ in range(args.rounds):
                for label, used in (("one", servers[:1]), ("two", servers)):
                    result = asyncio.run(ingest_round(used, args))
                    results[label].append(result)
                    log(
                        f"round {round_ + 1}, {label} worker(s): {result['per_s']:.0f} chunks/s, "
                        f"workers' CPU {', '.join(f'{p:.0f}%' for p in result['server_cpu_pct'])}"
                        f", client {result['client_cpu_pct']:.0f}%, "
                        f"others {result['others_pct']:.0f}%, bad {result['bad']}"
                    )
        finally:
            for server in servers:
                server.stop()

    def mean(label: str) -> float:
        runs = results[label]
        return sum(r["per_s"] for r in runs) / len(runs)

    one, two = mean("one"), mean("two")
    log(f"aggregate: one worker {one:.0f} chunks/s, two workers {two:.0f}: {two / one:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"one": one, "two": two, "runs": results}, indent=2))


if __name__ == "__main__":
    main()
