"""Fan-out benchmark (issue 11 §1): server CPU per delivered spectator frame, against a bare
`websockets.broadcast` server fanning the same frames to the same number of clients.

    .venv/bin/python -m bench.fanout                        # both backends, N = 20, 100, 500
    .venv/bin/python -m bench.fanout --backends embedded --spectators 100 --seconds 4
    .venv/bin/python -m bench.fanout --two-workers-only     # 500 spectators over 2 workers
    .venv/bin/python -m bench.fanout --profile /tmp/prof    # py-spy of each Parley run

Per backend, one `python -m config.server` (what bin/serve runs; DJANGO_SETTINGS_MODULE=
bench.settings) on a fresh database (bench.core.backend_env). For each N:

1. parley     N spectators connect to one room over WS /spectate/ws (raw asyncio clients: a
              frame costs the client a header parse, so the client stays light), then one
              stream of 20 ms chunks is POSTed to /audio at --rate for --seconds. Measured:
              the server process's CPU time (utime + stime) from the first POST until every
              client has every chunk, over the frames delivered; receipt minus POST send time
              per chunk and client (p50/p99), and receipt minus the event's `ts` (set in
              the ingest transaction just before its commit: commit, broadcast, fan-out,
              without the POST's queueing and ingest); loss and reorder per client.
2. yardstick  a bare `websockets` server (a subprocess of this file, `--yardstick-server`)
              with N clients and one publisher connection; the publisher sends the very JSON
              texts the Parley clients received (the audio_chunk events) at the same rate,
              and the server `websockets.broadcast`s each to the N clients. Same CPU measure.
3. ingest     once per backend, the same POSTs with no spectator: the server's CPU per chunk
              that is not fan-out (`marginal` = (CPU - ingest CPU) / frames).

`--two-workers`: PostgreSQL + Redis, two config.server workers, 500 spectators split evenly,
chunks POSTed alternately to both at 50/s: delivery p99, loss, reorder (issue 11 §3).

Ratios are ours / yardstick for the same N in the same run. The machine has 2 cores shared
with other work: `others` is what other processes took meanwhile (bench.core.CpuMeter).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import secrets
import shlex
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.core import (
    BenchError,
    CpuMeter,
    Profiler,
    backend_env,
    cpu_seconds,
    log,
    parse_ts,
    pcm_b64,
    summary,
)
from bench.http import HttpPool
from tests.support.servers import PARLEY_SERVER, PROJECT_ROOT, DaphneProcess, free_port

BACKENDS = {
    "embedded": "embedded (SQLite + in-memory layer)",
    "postgres": "PostgreSQL + Redis (pubsub layer)",
}
TARGET_RATIO = 2.0
TWO_WORKER_P99_MS = 100.0


# --- a light client ---------------------------------------------------------------------------


class FrameClient(asyncio.Protocol):
    """A WebSocket client that only splits the stream into frames and timestamps each one
    (perf_counter at the read that completed it). Text frames are kept as bytes; a close
    frame ends it (its code kept)."""

    def __init__(self, path: str, host: str) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: "
            f"{base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.buffer = bytearray()
        self.upgraded = False
        self.frames: list[tuple[float, bytes]] = []
        self.opened = asyncio.get_running_loop().create_future()
        self.first = asyncio.get_running_loop().create_future()  # first frame
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end])
            del self.buffer[: end + 4]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.opened.set_exception(BenchError(f"handshake refused: {head[:80]!r}"))
                return
            self.upgraded = True
            self.opened.set_result(None)
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if len(buf) - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
            elif opcode in (0x1, 0x2):
                self.frames.append((now, payload))
                if not self.first.done():
                    self.first.set_result(None)
        if pos:
            del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(BenchError("connection lost before the upgrade"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect_clients(host: str, port: int, path: str, count: int) -> list[FrameClient]:
    """`count` clients of ws://host:port/path, each upgraded and past its first frame for the
    Parley socket (its state), connected 50 at a time."""
    loop = asyncio.get_running_loop()
    clients: list[FrameClient] = []
    for start in range(0, count, 50):
        batch = []
        for _ in range(min(50, count - start)):
            _, client = await loop.create_connection(
                lambda: FrameClient(path, f"{host}:{port}"), host, port
            )
            batch.append(client)
        await asyncio.wait_for(asyncio.gather(*(c.opened for c in batch)), 30)
        clients += batch
    return clients


async def wait_frames(
    clients: list[FrameClient], base: list[int], expected: int, timeout: float
) -> bool:
    """Wait until every client has `expected` frames past `base` (its count before the
    run); False on timeout."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(len(c.frames) - b >= expected for c, b in zip(clients, base, strict=True)):
            return True
        await asyncio.sleep(0.02)
    return False


# --- Parley -----------------------------------------------------------------------------------


async def post_paced(
    pools: list[HttpPool], room: str, stream_id: str, count: int, rate: float, chunk_ms: int
) -> list[float]:
    """POST `count` chunks at `rate`, round robin over `pools`; their send times."""
    data = pcm_b64(chunk_ms)
    sent = [math.nan] * count
    failures: list[str] = []

    async def post(seq: int) -> None:
        sent[seq] = time.perf_counter()
        body = {"stream_id": stream_id, "seq": seq, "room": room, "speaker": "bench-fanout"}
        status, ack = await pools[seq % len(pools)].post_json(
            "/audio", {**body, "data": data, "done": False}
        )
        if status != 200:
            failures.append(f"{status}: {ack}")

    tasks = []
    start = time.perf_counter() + 0.05
    for seq in range(count):
        delay = start + seq / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(seq)))
    await asyncio.gather(*tasks)
    if failures:
        raise BenchError(f"{len(failures)} POSTs failed, first: {failures[0]}")
    return sent


def check_delivery(
    clients: list[FrameClient], sent: list[float], start_index: list[int], stream_id: str
) -> dict[str, Any]:
    """Latency, loss and reorder of the stream's audio_chunk events over every client."""
    latencies: list[float] = []
    since_ts: list[float] = []  # receipt minus the event's ts (written before its commit)
    wall_offset = time.time() - time.perf_counter()
    missing = reordered = 0
    texts: list[bytes] = []
    key = f'"stream_id": "{stream_id}"'.encode()
    for index, (client, begin) in enumerate(zip(clients, start_index, strict=True)):
        last = -1
        seen = set()
        for at, payload in client.frames[begin:]:
            if b'"type": "audio_chunk"' not in payload or key not in payload:
                continue
            event = json.loads(payload)
            seq = event["seq"]
            since_ts.append((at + wall_offset - parse_ts(event["ts"])) * 1000)
            if seq <= last:
                reordered += 1
            last = max(last, seq)
            seen.add(seq)
            latencies.append((at - sent[seq]) * 1000)
            if index == 0:
                texts.append(payload)
        missing += len(sent) - len(seen)
    return {
        "latency_ms": summary(latencies),
        "since_ts_ms": summary(since_ts),
        "missing": missing,
        "reordered": reordered,
        "texts": texts,
    }


async def parley_run(
    servers: list[DaphneProcess], spectators: int, args: argparse.Namespace, label: str
) -> dict[str, Any]:
    room = f"fan-{secrets.token_hex(3)}"
    stream_id = f"{room}-0"
    clients: list[FrameClient] = []
    for index in range(len(servers)):
        share = spectators // len(servers) + (1 if index < spectators % len(servers) else 0)
        server = servers[index]
        clients += await connect_clients(
            server.host, server.port, f"/spectate/ws?room={room}", share
        )
    if clients:
        await asyncio.wait_for(asyncio.gather(*(c.first for c in clients)), 30)
    await asyncio.sleep(0.3)
    begin = [len(c.frames) for c in clients]
    pools = [HttpPool(s.host, s.port) for s in servers]
    count = int(args.seconds * args.rate)
    pids = [s.pid for s in servers]
    cpu_before = [cpu_seconds(pid) for pid in pids]
    wall = time.perf_counter()
    with (
        CpuMeter(servers[0].pid) as meter,
        Profiler(args.profile_dir, servers[0].pid, label),
    ):
        sent = await post_paced(pools, room, stream_id, count, args.rate, args.chunk_ms)
        complete = await wait_frames(clients, begin, count, args.drain) if clients else True
    wall = time.perf_counter() - wall
    cpu = sum(cpu_seconds(pid) - before for pid, before in zip(pids, cpu_before, strict=True))
    for pool in pools:
        await pool.close()
    delivered = sum(len(c.frames) - b for c, b in zip(clients, begin, strict=True))
    checked = check_delivery(clients, sent, begin, stream_id)
    for client in clients:
        client.close()
    return {
        "spectators": spectators,
        "chunks": count,
        "frames": delivered,
        "complete": complete,
        "cpu_s": cpu,
        "cpu_pct": 100 * cpu / wall,
        "cpu_us_per_frame": 1e6 * cpu / delivered if delivered else math.nan,
        "cpu_ms_per_chunk": 1000 * cpu / count,
        "client_pct": meter.client_pct,
        "others_pct": meter.others_pct,
        **checked,
    }


# --- the yardstick ----------------------------------------------------------------------------


def yardstick_server(port: int) -> None:
    """A bare websockets server: `/pub` connections' messages are broadcast to every other
    connection with websockets.broadcast."""
    import websockets
    from websockets.asyncio.server import serve

    async def main() -> None:
        subscribers: set[Any] = set()

        async def handler(ws: Any) -> None:
            if ws.request.path == "/pub":
                async for message in ws:
                    websockets.broadcast(subscribers, message)
                return
            subscribers.add(ws)
            try:
                await ws.send('{"type": "hello"}')  # the client's "first frame"
                await ws.wait_closed()
            finally:
                subscribers.discard(ws)

        async with serve(handler, "127.0.0.1", port, compression=None, max_size=None):
            print("ready", flush=True)
            await asyncio.Future()

    asyncio.run(main())


async def yardstick_run(
    spectators: int, texts: list[bytes], rate: float, drain: float
) -> dict[str, Any]:
    import websockets

    port = free_port()
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once, before the measurement
        [sys.executable, "-m", "bench.fanout", "--yardstick-server", str(port)],
        stdout=subprocess.PIPE,
        cwd=PROJECT_ROOT,
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, proc.stdout.readline)
        if line.strip() != b"ready":
            raise BenchError("yardstick server did not start")
        clients = await connect_clients("127.0.0.1", port, "/sub", spectators)
        await asyncio.wait_for(asyncio.gather(*(c.first for c in clients)), 30)
        begin = [len(c.frames) for c in clients]
        decoded = [t.decode() for t in texts]
        async with websockets.connect(
            f"ws://127.0.0.1:{port}/pub", compression=None, max_size=None
        ) as pub:
            await asyncio.sleep(0.3)
            sent = [math.nan] * len(decoded)
            cpu_before = cpu_seconds(proc.pid)
            wall = time.perf_counter()
            with CpuMeter(proc.pid) as meter:
                start = time.perf_counter() + 0.05
                for index, text in enumerate(decoded):
                    delay = start + index / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    sent[index] = time.perf_counter()
                    await pub.send(text)
                complete = await wait_frames(clients, begin, len(decoded), drain)
            wall = time.perf_counter() - wall
            cpu = cpu_seconds(proc.pid) - cpu_before
        delivered = sum(len(c.frames) - b for c, b in zip(clients, begin, strict=True))
        latencies = [
            (at - sent[i]) * 1000
            for c, b in zip(clients, begin, strict=True)
            for i, (at, _) in enumerate(c.frames[b:])
            if i < len(sent)
        ]
        for client in clients:
            client.close()
        return {
            "spectators": spectators,
            "frames": delivered,
            "complete": complete,
            "cpu_s": cpu,
            "cpu_pct": 100 * cpu / wall,
            "cpu_us_per_frame": 1e6 * cpu / delivered if delivered else math.nan,
            "latency_ms": summary(latencies),
            "client_pct": meter.client_pct,
            "others_pct": meter.others_pct,
        }
    finally:
        proc.terminate()
        proc.wait(10)


# --- runs -------------------------------------------------------------------------------------


def start_server(env: dict[str, str | None], name: str, args: argparse.Namespace) -> DaphneProcess:
    return DaphneProcess(
        env=env, name=name, server=PARLEY_SERVER, extra_args=shlex.split(args.daphne_args)
    )


def run_backend(name: str, args: argparse.Namespace) -> dict[str, Any]:
    log(f"{BACKENDS[name]}: fresh database, migrate, start config.server")
    result: dict[str, Any] = {"backend": name, "label": BACKENDS[name], "runs": []}
    with backend_env(name, args) as env:
        database = urlsplit(env["DATABASE_URL"] or "").path.strip("/")
        CpuMeter.markers = (f" {database} ", "redis-server") if database else ()
        server = start_server(env, f"fanout-{name}", args)
        try:
            time.sleep(0.5)
            ingest = asyncio.run(parley_run([server], 0, args, f"{name}-ingest"))
            result["ingest_ms_per_chunk"] = ingest["cpu_ms_per_chunk"]
            log(f"  ingest alone: {ingest['cpu_ms_per_chunk']:.2f} ms CPU per chunk")
            for n in args.spectators:
                ours = asyncio.run(parley_run([server], n, args, f"{name}-{n}"))
                ours["marginal_us_per_frame"] = (
                    1e6 * (ours["cpu_s"] - ingest["cpu_ms_per_chunk"] * ours["chunks"] / 1000)
                ) / max(1, ours["frames"])
                texts = ours.pop("texts")
                bare = asyncio.run(yardstick_run(n, texts, args.rate, args.drain))
                ratio = ours["cpu_us_per_frame"] / bare["cpu_us_per_frame"]
                result["runs"].append({"parley": ours, "yardstick": bare, "ratio": ratio})
                lat = ours["latency_ms"]
                log(
                    f"  N={n}: {ours['cpu_us_per_frame']:.1f} us/frame "
                    f"(marginal {ours['marginal_us_per_frame']:.1f}) vs bare "
                    f"{bare['cpu_us_per_frame']:.1f} -> {ratio:.2f}x; server "
                    f"{ours['cpu_pct']:.0f}% CPU; p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} ms "
                    f"(bare p99 {bare['latency_ms']['p99']:.1f}; from the event's ts p99 "
                    f"{ours['since_ts_ms']['p99']:.1f}); missing {ours['missing']}, "
                    f"reordered {ours['reordered']}, complete {ours['complete']}; "
                    f"others {ours['others_pct']:.0f}%"
                )
        finally:
            server.stop()
    return result


def run_two_workers(args: argparse.Namespace) -> dict[str, Any]:
    log("two workers on PostgreSQL + Redis: fresh database, migrate, start 2 config.server")
    with backend_env("postgres", args) as env:
        database = urlsplit(env["DATABASE_URL"] or "").path.strip("/")
        CpuMeter.markers = (f" {database} ", "redis-server")
        servers = [start_server(env, f"fanout-w{i}", args) for i in range(2)]
        try:
            time.sleep(0.5)
            saved = args.rate
            args.rate = args.two_worker_rate
            run = asyncio.run(parley_run(servers, args.two_worker_spectators, args, "two-workers"))
            args.rate = saved
            run.pop("texts")
            lat = run["latency_ms"]
            log(
                f"  2 workers, {run['spectators']} spectators, {args.two_worker_rate}/s: "
                f"p50 {lat['p50']:.1f} p99 {lat['p99']:.1f} max {lat['max']:.1f} ms "
                f"(from the event's ts: p50 {run['since_ts_ms']['p50']:.1f} p99 "
                f"{run['since_ts_ms']['p99']:.1f}); missing {run['missing']}, "
                f"reordered {run['reordered']}; servers "
                f"{run['cpu_pct']:.0f}% CPU (sum of both), client {run['client_pct']:.0f}%, "
                f"others {run['others_pct']:.0f}%; {run['cpu_us_per_frame']:.1f} us/frame"
            )
            return run
        finally:
            for server in servers:
                server.stop()


def render(results: list[dict[str, Any]], two: dict[str, Any] | None) -> str:
    lines = [
        "| backend | N | ours µs/frame (marginal) | bare µs/frame | ratio (goal ≤ 2) | "
        "p50 / p99 ms (bare p99) | p99 from ts | lost / reordered | server CPU | client | "
        "others |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        for run in result["runs"]:
            ours, bare = run["parley"], run["yardstick"]
            lat = ours["latency_ms"]
            lines.append(
                f"| {result['backend']} | {ours['spectators']} | "
                f"{ours['cpu_us_per_frame']:.1f} ({ours['marginal_us_per_frame']:.1f}) | "
                f"{bare['cpu_us_per_frame']:.1f} | {run['ratio']:.2f} | "
                f"{lat['p50']:.1f} / {lat['p99']:.1f} ({bare['latency_ms']['p99']:.1f}) | "
                f"{ours['since_ts_ms']['p99']:.1f} | "
                f"{ours['missing']} / {ours['reordered']} | {ours['cpu_pct']:.0f}% | "
                f"{ours['client_pct']:.0f}% | {ours['others_pct']:.0f}% |"
            )
    for result in results:
        lines.append(
            f"\n{result['backend']}: ingest alone {result['ingest_ms_per_chunk']:.2f} ms CPU/chunk."
        )
    if two:
        lat = two["latency_ms"]
        lines.append(
            f"\nTwo workers (PostgreSQL + Redis), {two['spectators']} spectators, "
            f"{two['chunks']} chunks: p50 {lat['p50']:.1f} ms, p99 {lat['p99']:.1f} ms "
            f"(goal ≤ {TWO_WORKER_P99_MS:.0f}), max {lat['max']:.1f} ms; from the event's ts "
            f"p50 {two['since_ts_ms']['p50']:.1f} ms, p99 {two['since_ts_ms']['p99']:.1f} ms; "
            f"lost {two['missing']}, "
            f"reordered {two['reordered']}; servers {two['cpu_pct']:.0f}% CPU together, "
            f"client {two['client_pct']:.0f}%, others {two['others_pct']:.0f}%."
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="embedded,postgres")
    parser.add_argument("--spectators", default="20,100,500")
    parser.add_argument("--rate", type=float, default=50.0, help="chunks/s")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of POSTs per run")
    parser.add_argument("--chunk-ms", type=int, default=20)
    parser.add_argument("--drain", type=float, default=30.0, help="seconds to wait for delivery")
    parser.add_argument("--two-workers", action="store_true", help="also the two-worker run")
    parser.add_argument("--two-workers-only", action="store_true")
    parser.add_argument("--two-worker-spectators", type=int, default=500)
    parser.add_argument("--two-worker-rate", type=float, default=50.0)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument("--daphne-args", default="")
    parser.add_argument("--profile", help="directory for py-spy raw profiles of each Parley run")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--yardstick-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.spectators = [int(n) for n in args.spectators.split(",") if n]
    args.backends = [b for b in args.backends.split(",") if b]
    args.profile_dir = Path(args.profile) if args.profile else None
    if args.profile_dir:
        args.profile_dir.mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.yardstick_server:
        yardstick_server(args.yardstick_server)
        return 0
    results = []
    if not args.two_workers_only:
        for backend in args.backends:
            results.append(run_backend(backend, args))
    two = run_two_workers(args) if (args.two_workers or args.two_workers_only) else None
    print(render(results, two))
    if args.json:
        Path(args.json).write_text(json.dumps({"backends": results, "two_workers": two}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
