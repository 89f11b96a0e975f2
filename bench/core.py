"""The core benchmark (issue #2 §12): release lateness, chunk latency, ingest throughput, WS ingest.

    .venv/bin/python -m bench.core                 # both backends, about 3 minutes
    .venv/bin/python -m bench.core --quick         # a smoke run, under a minute
    .venv/bin/python -m bench.core --backends embedded --profile /tmp/prof

Each backend gets its own daphne (DJANGO_SETTINGS_MODULE=bench.settings, serving
bench.asgi:application), started by the bench on a fresh database, and four phases run
against it, by default in this order:

1. lateness    several rooms, each with one WebSocket spectator, play short streams one after
               another; for each stream: spectator's receipt of `playback_done` minus the
               `playback_ends_at` the final chunk's POST answered (wall clock, same machine).
2. latency     one room, N spectators, one stream POSTed at a steady pace; for every chunk and
               every spectator: receipt of its `audio_chunk` minus the moment the POST was sent.
3. throughput  wrk (bench/ingest.lua) against POST /audio and against the bench-only bare view
               POST /bench/bare on the same daphne, alternating, same bodies.
4. ws          N sockets stream chunks over WS /ws/audio with a pipelined window (binary, then
               JSON frames), acked chunks/s, against the bench-only bare echo WS /bench/ws-echo
               on the same daphne (bench/asgi.py), alternating, same frames (issue 11 §2).

`--phases ws,wrk` runs only those (wrk = throughput), in the order given.

See bench/README.md for what the numbers mean and docs/benchmarks.md for results.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import platform
import random
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websockets

from bench.http import HttpPool
from tests.support.servers import (
    PARLEY_SERVER,
    PROJECT_ROOT,
    DaphneProcess,
    postgres_url,
    redis_url,
)

BENCH_DIR = Path(__file__).resolve().parent
LUA_SCRIPT = BENCH_DIR / "ingest.lua"
BYTES_PER_MS = 48  # 24 kHz, mono, 16-bit
QUIET_PCT = 10.0  # others' CPU (% of the machine) above which a measurement is noisy
QUIET_MARGIN_S = 1.0  # a sample is quiet if others were quiet from this long before it
# The yardstick: a bare view on the same handler as POST /audio (the lean API handler,
# config/handlers.py), and the same view on Django's default middleware stack, as in a
# stock project (the reference numbers).
BARE_PATH = "/bench/bare"
STOCK_BARE_PATH = "/bench-stock/bare"
# WS /ws/audio's yardstick: a bare echo consumer on the same daphne (bench/asgi.py).
ECHO_PATH = "/bench/ws-echo"
BENCH_APP = "bench.asgi:application"
TARGETS = {
    "lateness_p99_ms": 5.0,
    "chunk_p99_ms": 20.0,
    "ingest_ratio": 0.60,
    # issue 11 §2: acked chunks/s of one worker over WS /ws/audio, and its share of the echo
    "ws_per_s": {"embedded": 1500.0, "postgres": 800.0, "postgres-core": 800.0},
    "ws_ratio": 0.50,
}
PHASES = ("lateness", "latency", "throughput", "ws")
PHASE_ALIASES = {"wrk": "throughput"}
BACKENDS = {
    "embedded": "embedded (SQLite + in-memory layer)",
    "postgres": "PostgreSQL + Redis (pubsub layer)",
    "postgres-core": "PostgreSQL + Redis (core layer)",
}


DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
HEADING = "## Core: lateness, chunk latency, ingest throughput"
BLOCK_START = "<!-- bench.core results: start (python -m bench.core --write-docs) -->"
BLOCK_END = "<!-- bench.core results: end -->"


class BenchError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- small helpers ------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 0.50),
        "p90": pct(values, 0.90),
        "p99": pct(values, 0.99),
        "max": max(values) if values else math.nan,
        "min": min(values) if values else math.nan,
    }


def parse_ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def pcm_b64(ms: int) -> str:
    return base64.b64encode(b"\x01\x02" * (ms * BYTES_PER_MS // 2)).decode()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        fields = fh.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values) - values[3] - values[4]) / tick, sum(values) / tick


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, CPU seconds) of every process."""
    tick = os.sysconf("SC_CLK_TCK")
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
            table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    return table


def helper_pids(markers: tuple[str, ...]) -> list[int]:
    """Server processes that work for this run (PostgreSQL backends of our database, Redis)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if any(marker in cmdline for marker in markers):
            pids.append(int(entry))
    return pids


def our_cpu(daphne_pid: int, helpers: list[int]) -> float:
    """CPU seconds used so far by this run: daphne, the helpers, this process, its children
    (running ones such as wrk, and reaped ones)."""
    table = _proc_table()
    me = os.getpid()
    pids = {daphne_pid, *helpers} | {pid for pid, (ppid, _) in table.items() if ppid == me}
    times = os.times()
    own = times.user + times.system + times.children_user + times.children_system
    return own + sum(table[pid][1] for pid in pids if pid in table)


class CpuMeter:
    """CPU use over a phase: daphne, this client, and every other process on the machine.

    `others_pct` is the machine's busy time minus ours (daphne, this process and the wrk it
    runs, the PostgreSQL backends of our database and Redis): what other people's processes
    took from the cores while we measured, in % of the machine.
    """

    markers: tuple[str, ...] = ()  # set per backend: cmdline markers of helper processes

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def __enter__(self) -> CpuMeter:
        self.helpers = helper_pids(self.markers) if self.markers else []
        self.wall = time.monotonic()
        self.server = cpu_seconds(self.pid)
        self.client = time.process_time()
        self.ours = our_cpu(self.pid, self.helpers)
        self.machine, self.machine_total = machine_cpu()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self.wall
        self.server_s = cpu_seconds(self.pid) - self.server
        self.server_pct = 100 * self.server_s / wall
        self.client_pct = 100 * (time.process_time() - self.client) / wall
        busy, total = machine_cpu()
        ours = our_cpu(self.pid, self.helpers) - self.ours
        self.others_pct = max(
            0.0, 100 * (busy - self.machine - ours) / (total - self.machine_total)
        )


class NoiseMonitor:
    """Every `interval` s, how much of the machine other people's processes used.

    Samples are tagged with it afterwards: a sample is *quiet* when others stayed under
    QUIET_PCT from `QUIET_MARGIN_S` before it started until it ended (a backlog built up
    during noise takes a moment to drain). Timestamps are time.perf_counter().
    """

    def __init__(self, daphne_pid: int, interval: float = 0.5) -> None:
        self.daphne_pid = daphne_pid
        self.interval = interval
        self.windows: list[tuple[float, float, float]] = []  # (start, end, others %)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="noise", daemon=True)

    def __enter__(self) -> NoiseMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        helpers = helper_pids(CpuMeter.markers) if CpuMeter.markers else []
        t0, ours0, (busy0, total0) = (
            time.perf_counter(),
            our_cpu(self.daphne_pid, helpers),
            machine_cpu(),
        )
        while not self._stop.wait(self.interval):
            t1, ours1, (busy1, total1) = (
                time.perf_counter(),
                our_cpu(self.daphne_pid, helpers),
                machine_cpu(),
            )
            others = 100 * ((busy1 - busy0) - (ours1 - ours0)) / max(1e-9, total1 - total0)
            self.windows.append((t0, t1, max(0.0, others)))
            t0, ours0, busy0, total0 = t1, ours1, busy1, total1

    def quiet(self, start: float, end: float) -> bool:
        start -= QUIET_MARGIN_S
        return all(o < QUIET_PCT for a, b, o in self.windows if b > start and a < end)


def python_speed() -> float:
    """Millions of iterations per CPU second of a fixed pure-Python loop (best of 5).

    A yardstick for the machine itself: on a shared VM the same code can run several times
    slower (a busy sibling hyperthread, an oversubscribed host) without any steal showing.
    """
    best = math.inf
    for _ in range(5):
        started = time.process_time()
        total = 0
        for i in range(200_000):
            total += i
        best = min(best, time.process_time() - started)
    return 0.2 / best


def background_busy(seconds: float = 1.0) -> float:
    """Share of the machine's CPU (all cores, %) used while the bench itself is idle."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    busy0, total0 = sample()
    time.sleep(seconds)
    busy1, total1 = sample()
    return 100 * (busy1 - busy0) / max(1, total1 - total0)


def wait_quiet(limit_s: float, threshold: float = QUIET_PCT) -> float:
    """Sample the background load until it is under `threshold` or `limit_s` passed."""
    started = time.monotonic()
    logged = -math.inf
    while True:
        busy = background_busy()
        waited = time.monotonic() - started
        if busy < threshold or waited >= limit_s:
            return busy
        if waited - logged >= 30:
            logged = waited
            log(f"  machine busy ({busy:.0f}% of all cores used by others), waiting")


class Profiler:
    """py-spy record of the daphne process for one phase (only with --profile)."""

    gil = False  # --profile-gil: sample only the thread holding the GIL

    def __init__(self, directory: Path | None, pid: int, name: str) -> None:
        self.directory = directory
        self.pid = pid
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Profiler:
        if self.directory is None:
            return self
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.path = self.directory / f"{self.name}.txt"
        self.proc = subprocess.Popen(
            [spy, "record", "-p", str(self.pid), "-r", "200", "-f", "raw", "--threads"]
            + ["--nonblocking", "-o", str(self.path)]
            + (["--gil"] if self.gil else []),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)  # let py-spy attach before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- backends -----------------------------------------------------------------------------


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def _migrate(env: dict[str, str | None]) -> None:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env=merged,
        check=True,
    )


@contextlib.contextmanager
def backend_env(name: str, args: argparse.Namespace) -> Iterator[dict[str, str | None]]:
    """Environment of a migrated, empty deployment of backend `name`; cleaned up after."""
    var_dir = Path(tempfile.mkdtemp(prefix=f"parley-bench-{name}-"))
    env: dict[str, str | None] = {
        "DJANGO_SETTINGS_MODULE": "bench.settings",
        "PARLEY_VAR_DIR": str(var_dir),
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_CHANNEL_LAYER": None,
    }
    database = None
    try:
        if name != "embedded":
            import psycopg

            server_url = args.database_url or postgres_url()
            database = f"parley_bench_{secrets.token_hex(4)}"
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            env["DATABASE_URL"] = _with_database(server_url, database)
            env["REDIS_URL"] = args.redis_url or redis_url()
            env["PARLEY_CHANNEL_PREFIX"] = database
            if name == "postgres-core":
                env["PARLEY_CHANNEL_LAYER"] = "channels_redis.core.RedisChannelLayer"
        _migrate(env)
        yield env
    finally:
        if database is not None:
            import psycopg

            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        shutil.rmtree(var_dir, ignore_errors=True)


# --- phase 1: release lateness --------------------------------------------------------------


@dataclass
class Release:
    room: str
    stream_id: str
    chunks: int
    audio_ms: int
    lead_ms: float  # predicted end minus the final POST's answer: > 0 means a timer released it
    late_ms: float  # spectator's receipt of playback_done minus the predicted end
    server_ms: float  # the event's ts (written in the release transaction) minus predicted end
    deliver_ms: float  # receipt minus the event's ts: commit, broadcast, socket
    started: float  # perf_counter: first POST of the stream
    received: float  # perf_counter: receipt of playback_done
    quiet: bool = False  # other processes stayed quiet around it (NoiseMonitor)


async def lateness_phase(server: DaphneProcess, args: argparse.Namespace) -> dict[str, Any]:
    token = secrets.token_hex(3)
    pool = HttpPool(server.host, server.port)
    releases: list[Release] = []
    duplicates = 0
    payloads = {ms: pcm_b64(ms) for ms in range(20, 101, 10)}
    counts = [
        args.streams // args.rooms + (1 if i < args.streams % args.rooms else 0)
        for i in range(args.rooms)
    ]

    async def room_loop(index: int, count: int) -> None:
        nonlocal duplicates
        rng = random.Random(args.seed * 1000 + index)
        room = f"late-{token}-{index}"
        url = f"{server.ws_url}/spectate/ws?room={room}"
        waiting: dict[str, asyncio.Future] = {}
        loop = asyncio.get_running_loop()
        async with websockets.connect(url, max_size=None, compression=None) as ws:
            assert json.loads(await ws.recv())["type"] == "state"

            async def reader() -> None:
                nonlocal duplicates
                async for raw in ws:
                    received, clock = time.time(), time.perf_counter()
                    message = json.loads(raw)
                    if message["type"] != "playback_done":
                        continue
                    future = waiting.get(message["stream_id"])
                    if future is None or future.done():
                        duplicates += 1
                    else:
                        future.set_result((received, clock, message))

            reading = asyncio.create_task(reader())
            # Rooms start staggered and pause a random --gap between streams, so releases
            # fall at scattered moments: this measures the release path, not a herd.
            await asyncio.sleep(index * args.stagger)
            for k in range(count):
                stream_id = f"{room}-{k}"
                waiting[stream_id] = loop.create_future()
                durations = [rng.randrange(20, 101, 10) for _ in range(rng.randint(3, 5))]
                ack: dict[str, Any] = {}
                started = time.perf_counter()
                for seq, ms in enumerate(durations):
                    status, ack = await pool.post_json(
                        "/audio",
                        {
                            "stream_id": stream_id,
                            "seq": seq,
                            "room": room,
                            "speaker": f"bench-{index}",
                            "data": payloads[ms],
                            "done": seq == len(durations) - 1,
                        },
                    )
                    if status != 200:
                        raise BenchError(f"POST /audio answered {status}: {ack}")
                answered = time.time()
                predicted = parse_ts(ack["playback_ends_at"])
                received, clock, message = await asyncio.wait_for(waiting[stream_id], 15)
                event_ts = parse_ts(message["ts"])
                releases.append(
                    Release(
                        room=room,
                        stream_id=stream_id,
                        chunks=len(durations),
                        audio_ms=sum(durations),
                        lead_ms=(predicted - answered) * 1000,
                        late_ms=(received - predicted) * 1000,
                        server_ms=(event_ts - predicted) * 1000,
                        deliver_ms=(received - event_ts) * 1000,
                        started=started,
                        received=clock,
                    )
                )
                await asyncio.sleep(rng.uniform(*args.gap))
            await asyncio.sleep(0.3)  # a duplicate release would arrive in this window
            reading.cancel()

    started = time.monotonic()
    with CpuMeter(server.pid) as cpu, NoiseMonitor(server.pid) as noise:
        await asyncio.gather(*(room_loop(i, n) for i, n in enumerate(counts)))
    elapsed = time.monotonic() - started
    await pool.close()
    for release in releases:
        release.quiet = noise.quiet(release.started, release.received)
    quiet = [r for r in releases if r.quiet]
    timed = [r for r in releases if r.lead_ms > 0]
    return {
        "streams": len(releases),
        "rooms": args.rooms,
        "seconds": elapsed,
        "releases_per_s": len(releases) / elapsed,
        "on_request_path": len(releases) - len(timed),
        "duplicates": duplicates,
        "early": sum(1 for r in releases if r.server_ms < 0),
        "late_ms": summary([r.late_ms for r in releases]),
        "late_quiet_ms": summary([r.late_ms for r in quiet]),
        "server_ms": summary([r.server_ms for r in releases]),
        "server_quiet_ms": summary([r.server_ms for r in quiet]),
        "deliver_ms": summary([r.deliver_ms for r in releases]),
        "lead_ms": summary([r.lead_ms for r in releases]),
        "server_cpu_pct": cpu.server_pct,
        "server_cpu_ms_per_stream": 1000 * cpu.server_s / max(1, len(releases)),
        "client_cpu_pct": cpu.client_pct,
        "others_pct": cpu.others_pct,
        "samples": [r.__dict__ for r in releases],
    }


# --- phase 2: chunk latency ---------------------------------------------------------------


async def latency_phase(server: DaphneProcess, args: argparse.Namespace) -> dict[str, Any]:
    token = secrets.token_hex(3)
    room = f"lat-{token}"
    stream_id = f"{room}-0"
    url = f"{server.ws_url}/spectate/ws?room={room}"
    sockets = []
    for _ in range(args.spectators):
        ws = await websockets.connect(url, max_size=None, compression=None)
        assert json.loads(await ws.recv())["type"] == "state"
        sockets.append(ws)
    received: list[list[tuple[float, str | bytes]]] = [[] for _ in sockets]

    async def reader(index: int, ws: Any) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in ws:
                # Timestamp first, parse after the run: keeps the client's loop free.
                received[index].append((time.perf_counter(), raw))

    readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(sockets)]
    pool = HttpPool(server.host, server.port)
    data = pcm_b64(args.chunk_ms)
    warmup = int(args.latency_warmup * args.rate)
    total = warmup + int(args.latency_seconds * args.rate)
    sent: list[float] = [math.nan] * total
    send_lag: list[float] = []
    failures: list[str] = []

    async def post(seq: int) -> None:
        sent[seq] = time.perf_counter()
        status, ack = await pool.post_json(
            "/audio",
            {
                "stream_id": stream_id,
                "seq": seq,
                "room": room,
                "speaker": "bench-latency",
                "data": data,
                "done": False,
            },
        )
        if status != 200:
            failures.append(f"{status}: {ack}")

    await asyncio.sleep(0.5)
    tasks: list[asyncio.Task] = []
    overloaded_at: int | None = None
    # More than 2 s of chunks unanswered: the worker cannot keep up with this rate, and
    # pacing on would only measure a growing queue. Stop, and say so in the result.
    backlog_limit = max(20, int(2 * args.rate))
    with CpuMeter(server.pid) as cpu, NoiseMonitor(server.pid) as noise:
        start = time.perf_counter() + 0.1
        for seq in range(total):
            target = start + seq / args.rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if sum(1 for task in tasks[-backlog_limit * 2 :] if not task.done()) > backlog_limit:
                overloaded_at = seq
                break
            send_lag.append((time.perf_counter() - target) * 1000)
            tasks.append(asyncio.create_task(post(seq)))
        await asyncio.gather(*tasks)
        paced_s = time.perf_counter() - start
        total = len(tasks)
        # Drain: every spectator should get every chunk (plus the claim's turn and state
        # events); a lagging fan-out is latency, not loss, so wait for it (up to 10 s).
        for _ in range(200):
            if all(len(r) >= total for r in received):
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    for ws in sockets:
        await ws.close()
    for task in readers:
        task.cancel()
    await pool.close()
    if failures:
        raise BenchError(f"{len(failures)} POSTs failed, first: {failures[0]}")

    latencies: list[float] = []
    quiet_latencies: list[float] = []
    missing = out_of_order = 0
    for per_socket in received:
        seen: list[int] = []
        for at, raw in per_socket:
            message = json.loads(raw)
            if message["type"] != "audio_chunk" or message["stream_id"] != stream_id:
                continue
            seq = message["seq"]
            seen.append(seq)
            if seq >= warmup:
                latencies.append((at - sent[seq]) * 1000)
                if noise.quiet(sent[seq], at):
                    quiet_latencies.append(latencies[-1])
        out_of_order += sum(1 for a, b in itertools.pairwise(seen) if b != a + 1)
        missing += total - len(set(seen))
    return {
        "rate": args.rate,
        "achieved_rate": total / paced_s,
        "overloaded_after": overloaded_at,
        "chunk_ms": args.chunk_ms,
        "spectators": args.spectators,
        "chunks": max(0, total - warmup),
        "warmup_chunks": warmup,
        "connections": pool.opened,
        "missing": missing,
        "out_of_order": out_of_order,
        "latency_ms": summary(latencies),
        "latency_quiet_ms": summary(quiet_latencies),
        "server_cpu_ms_per_chunk": 1000 * cpu.server_s / total,
        "send_lag_ms": summary(send_lag),
        "server_cpu_pct": cpu.server_pct,
        "client_cpu_pct": cpu.client_pct,
        "others_pct": cpu.others_pct,
    }


# --- phase 3: throughput ------------------------------------------------------------------


def wrk_run(
    server: DaphneProcess, path: str, *, seconds: float, connections: int, per_stream: int
) -> dict[str, Any]:
    token = f"w{secrets.token_hex(3)}"
    command = [
        "wrk",
        "-t",
        str(connections),
        "-c",
        str(connections),
        "-d",
        f"{seconds:g}s",
        "-s",
        str(LUA_SCRIPT),
        f"{server.url}{path}",
        "--",
        token,
        str(per_stream),
    ]
    with CpuMeter(server.pid) as cpu:
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH_JSON ")), None)
    if line is None:
        raise BenchError(f"no BENCH_JSON line in wrk output:\n{done.stdout}")
    result = json.loads(line.removeprefix("BENCH_JSON "))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    result["non_2xx"] = int(non2xx.group(1)) if non2xx else 0
    errors = sum(result[k] for k in ("connect_errors", "read_errors", "timeouts"))
    result["ok_per_s"] = (result["requests"] - result["non_2xx"]) / (result["duration_us"] / 1e6)
    result["errors"] = errors + result["non_2xx"]
    result["server_cpu_pct"] = cpu.server_pct
    result["others_pct"] = cpu.others_pct
    result["server_cpu_ms_per_req"] = 1000 * cpu.server_s / max(1, result["requests"])
    result["path"] = path
    return result


def throughput_phase(
    server: DaphneProcess, args: argparse.Namespace, profile_dir: Path | None, backend: str
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise BenchError("wrk is not installed (apt-get install -y wrk)")
    options = {"connections": args.wrk_connections, "per_stream": args.chunks_per_stream}
    # Warm both paths up (imports, connection pools, SQLite page cache) before measuring.
    for path in (BARE_PATH, STOCK_BARE_PATH, "/audio"):
        wrk_run(server, path, seconds=args.wrk_warmup, **options)
    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "stock": [], "ingest": []}
    quiet_pairs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    # Bare and ingest alternate in pairs; a pair is quiet when other processes stayed under
    # QUIET_PCT during both runs. Noisy pairs earn up to --extra-rounds more pairs.
    for round_ in range(args.rounds + args.extra_rounds):
        if round_ >= args.rounds and len(quiet_pairs) >= args.rounds:
            break
        if round_ >= args.rounds:
            log(f"  only {len(quiet_pairs)} quiet pair(s) so far: one more round")
        pair = []
        for kind, path in (("bare", BARE_PATH), ("stock", STOCK_BARE_PATH), ("ingest", "/audio")):
            with Profiler(profile_dir, server.pid, f"{backend}-{kind}-{round_}"):
                last = wrk_run(server, path, seconds=args.wrk_seconds, **options)
            runs[kind].append(last)
            pair.append(last)
            log(
                f"  {kind:6} round {round_ + 1}: {last['ok_per_s']:.0f}/s, "
                f"p50 {last['lat_p50_us'] / 1000:.1f} ms, errors {last['errors']}, "
                f"daphne CPU {last['server_cpu_pct']:.0f}% "
                f"({last['server_cpu_ms_per_req']:.2f} ms per request), "
                f"others {last['others_pct']:.0f}%"
            )
        if all(r["others_pct"] < QUIET_PCT for r in pair):
            quiet_pairs.append((pair[0], pair[2]))

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else math.nan

    bare = mean([r["ok_per_s"] for r in runs["bare"]])
    stock = mean([r["ok_per_s"] for r in runs["stock"]])
    ingest = mean([r["ok_per_s"] for r in runs["ingest"]])
    quiet_bare = mean([b["ok_per_s"] for b, _ in quiet_pairs])
    quiet_ingest = mean([i["ok_per_s"] for _, i in quiet_pairs])
    return {
        "connections": args.wrk_connections,
        "seconds": args.wrk_seconds,
        "rounds": len(runs["bare"]),
        "quiet_rounds": len(quiet_pairs),
        "bare_per_s": bare,
        "ingest_per_s": ingest,
        "ratio": ingest / bare if bare else math.nan,
        "stock_per_s": stock,
        "stock_ratio": ingest / stock if stock else math.nan,
        "quiet_bare_per_s": quiet_bare,
        "quiet_ingest_per_s": quiet_ingest,
        "quiet_ratio": quiet_ingest / quiet_bare if quiet_pairs else math.nan,
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
        "runs": runs,
    }


# --- phase 4: WebSocket ingest ------------------------------------------------------------


async def ws_stream(
    url: str,
    frames: Any,
    *,
    window: int,
    until: float,
    check_acks: bool,
) -> dict[str, Any]:
    """One speaker: send `frames` (an iterator of str | bytes) with up to `window` frames
    unanswered until perf_counter() reaches `until`, then wait for the answers still due.

    Returns the receipt times of every answer, and (check_acks) the errors and the acks whose
    seq is not the next one (WS /ws/audio answers in the order sent).
    """
    credit = asyncio.Semaphore(window)
    answered: list[float] = []
    bad: list[str] = []
    expected = 0
    final: int | None = None  # frames sent, once sending stopped
    drained = asyncio.Event()
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            raise BenchError(f"{url}: no ready frame: {ready}")

        async def reader() -> None:
            nonlocal expected
            async for raw in ws:
                answered.append(time.perf_counter())
                credit.release()
                if final is not None and len(answered) >= final:
                    drained.set()
                if check_acks:
                    answer = json.loads(raw)
                    if answer.get("type") != "ack" or answer.get("seq") != expected:
                        bad.append(str(raw)[:200])
                    expected += 1

        reading = asyncio.create_task(reader())
        sent = 0
        while time.perf_counter() < until:
            await credit.acquire()
            await ws.send(next(frames))
            sent += 1
        # The frames still unanswered get 10 s (a lagging commit is slow, not lost).
        final = sent
        if len(answered) < sent:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), 10)
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
            await reading
    if len(answered) < sent:
        bad.append(f"{sent - len(answered)} frames unanswered")
    return {"sent": sent, "answered": answered, "bad": bad}


def ws_frames(kind: str, stream_id: str, chunk: bytes) -> Any:
    """The frames of one stream: raw PCM (binary), or POST /audio's JSON with base64 data."""
    if kind == "binary":
        return itertools.repeat(chunk)
    data = base64.b64encode(chunk).decode()
    return (
        f'{{"stream_id":"{stream_id}","seq":{seq},"data":"{data}"}}' for seq in itertools.count()
    )


async def ws_run(
    server: DaphneProcess, target: str, kind: str, args: argparse.Namespace
) -> dict[str, Any]:
    """N speakers at once against /ws/audio (target "ingest") or the bare echo ("echo")."""
    token = secrets.token_hex(3)
    chunk = b"\x01\x02" * (args.ws_chunk_ms * BYTES_PER_MS // 2)
    started = time.perf_counter()
    measure_from = started + args.ws_warmup
    until = measure_from + args.ws_seconds
    calls = []
    for index in range(args.ws_speakers):
        stream_id = f"wsi-{token}-{index}"
        if target == "echo":
            url = f"{server.ws_url}{ECHO_PATH}"
        else:
            # Each speaker in its own room (one floor each): the rate is the worker's, not a
            # room's; binary frames start at seq 0 of the stream the query names.
            url = (
                f"{server.ws_url}/ws/audio?room=wsi-{token}-{index}&speaker=bench-{index}"
                f"&stream_id={stream_id}"
            )
        calls.append(
            ws_stream(
                url,
                ws_frames(kind, stream_id, chunk),
                window=args.ws_window,
                until=until,
                check_acks=target == "ingest",
            )
        )
    # The CPU meter covers the measured seconds only (not connect, warm-up or drain).
    meter = CpuMeter(server.pid)

    async def metered() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        meter.__enter__()
        await asyncio.sleep(max(0.0, until - time.perf_counter()))
        meter.__exit__()

    streams, _ = await asyncio.gather(asyncio.gather(*calls), metered())
    counted = sum(1 for s in streams for t in s["answered"] if measure_from <= t < until)
    bad = [b for s in streams for b in s["bad"]]
    return {
        "target": target,
        "kind": kind,
        "per_s": counted / args.ws_seconds,
        "answered": counted,
        "sent": sum(s["sent"] for s in streams),
        "bad": len(bad),
        "bad_first": bad[:3],
        "server_cpu_pct": meter.server_pct,
        "server_cpu_ms_per_msg": 1000 * meter.server_s / max(1, counted),
        "client_cpu_pct": meter.client_pct,
        "others_pct": meter.others_pct,
    }


def ws_phase(
    server: DaphneProcess, args: argparse.Namespace, profile_dir: Path | None, backend: str
) -> dict[str, Any]:
    """WS /ws/audio against the bare echo, alternating, for each frame kind."""
    result: dict[str, Any] = {
        "speakers": args.ws_speakers,
        "window": args.ws_window,
        "chunk_ms": args.ws_chunk_ms,
        "seconds": args.ws_seconds,
        "kinds": {},
    }
    for kind in args.ws_frames:
        runs: dict[str, list[dict[str, Any]]] = {"echo": [], "ingest": []}
        for round_ in range(args.ws_rounds):
            for target in ("echo", "ingest"):
                with Profiler(profile_dir, server.pid, f"{backend}-ws-{kind}-{target}-{round_}"):
                    last = asyncio.run(ws_run(server, target, kind, args))
                runs[target].append(last)
                log(
                    f"  ws {kind:6} {target:6} round {round_ + 1}: {last['per_s']:.0f}/s, "
                    f"daphne CPU {last['server_cpu_pct']:.0f}% "
                    f"({last['server_cpu_ms_per_msg']:.3f} ms per message), "
                    f"client CPU {last['client_cpu_pct']:.0f}%, bad {last['bad']}, "
                    f"others {last['others_pct']:.0f}%"
                )
                if last["bad"]:
                    log(f"    first bad answers: {last['bad_first']}")

        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else math.nan

        echo = mean([r["per_s"] for r in runs["echo"]])
        ingest = mean([r["per_s"] for r in runs["ingest"]])
        result["kinds"][kind] = {
            "echo_per_s": echo,
            "ingest_per_s": ingest,
            "ratio": ingest / echo if echo else math.nan,
            "echo_cpu_ms": mean([r["server_cpu_ms_per_msg"] for r in runs["echo"]]),
            "ingest_cpu_ms": mean([r["server_cpu_ms_per_msg"] for r in runs["ingest"]]),
            "bad": sum(r["bad"] for rs in runs.values() for r in rs),
            "others_pct": max(r["others_pct"] for rs in runs.values() for r in rs),
            "runs": runs,
        }
    return result


# --- one backend --------------------------------------------------------------------------


def run_backend(name: str, args: argparse.Namespace) -> dict[str, Any]:
    log(f"{BACKENDS[name]}: fresh database, migrate, start daphne")
    profile_dir = Path(args.profile) if args.profile else None
    if profile_dir:
        profile_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"backend": name, "label": BACKENDS[name], "background_pct": {}}
    with backend_env(name, args) as env:
        database = urlsplit(env["DATABASE_URL"] or "").path.strip("/")
        CpuMeter.markers = (f" {database} ", "redis-server") if database else ()
        # What bin/serve and the Dockerfile run (config.server: daphne plus the spectator
        # frame fast path, limits and timeouts), not bare daphne.
        server = DaphneProcess(
            BENCH_APP,
            env=env,
            name=f"daphne-{name}",
            server=PARLEY_SERVER,
            extra_args=shlex.split(args.daphne_args),
        )
        try:
            time.sleep(0.5)  # first sweep, connection pool warm-up
            for phase in args.phases:
                # The bench and its daphne are idle now: whatever runs is someone else's.
                busy = wait_quiet(args.wait_quiet) if args.wait_quiet else background_busy()
                result["background_pct"][phase] = busy
                result.setdefault("speed", {})[phase] = python_speed()
                flag = "  (noisy: other processes are using the CPU)" if busy > QUIET_PCT else ""
                log(
                    f"  {phase}: background load {busy:.0f}% of all cores{flag}, "
                    f"Python speed {result['speed'][phase]:.1f} M loop iterations/s"
                )
                if phase == "lateness":
                    with Profiler(profile_dir, server.pid, f"{name}-lateness"):
                        result["lateness"] = asyncio.run(lateness_phase(server, args))
                    late = result["lateness"]["late_ms"]
                    log(
                        f"  lateness over {late['n']} streams: p50 {late['p50']:.2f} ms, "
                        f"p99 {late['p99']:.2f} ms, max {late['max']:.2f} ms; "
                        f"others' CPU {result['lateness']['others_pct']:.0f}%"
                    )
                elif phase == "latency":
                    with Profiler(profile_dir, server.pid, f"{name}-latency"):
                        result["latency"] = asyncio.run(latency_phase(server, args))
                    lat = result["latency"]["latency_ms"]
                    log(
                        f"  chunk latency over {lat['n']} receipts: p50 {lat['p50']:.2f} ms, "
                        f"p99 {lat['p99']:.2f} ms, max {lat['max']:.2f} ms; "
                        f"others' CPU {result['latency']['others_pct']:.0f}%"
                    )
                elif phase == "throughput":
                    result["throughput"] = throughput_phase(server, args, profile_dir, name)
                elif phase == "ws":
                    result["ws"] = ws_phase(server, args, profile_dir, name)
                else:
                    raise BenchError(f"unknown phase {phase!r}")
        finally:
            server.stop()
    return result


# --- report -------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    ram = "unknown"
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        kib = int(fh.readline().split()[1])
        ram = f"{kib / 1024 / 1024:.1f} GiB"

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=PROJECT_ROOT, capture_output=True, text=True)
        return done.stdout.strip()

    dirty = " (+ uncommitted changes)" if git("status", "--porcelain") else ""
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "ram": ram,
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short", "HEAD") + dirty,
    }


def _ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def _verdict(value: float, ok: bool) -> str:
    if math.isnan(value):
        return ""
    return " **PASS**" if ok else " **MISS**"


def _dist(stats: dict[str, float], target: float | None = None) -> str:
    if not stats["n"]:
        return "no samples"
    text = "{} / {} / {} (n={})".format(
        _ms(stats["p50"]), _ms(stats["p99"]), _ms(stats["max"]), stats["n"]
    )
    if target is not None:
        text += _verdict(stats["p99"], stats["p99"] <= target)
    return text


def render(results: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> str:
    header = ["metric", "target", *(r["label"] for r in results)]
    rows: list[list[str]] = []
    t = TARGETS

    def row(metric: str, target: str, cell) -> None:
        cells = []
        for r in results:
            try:
                cells.append(cell(r))
            except KeyError:
                cells.append("-")
        if any(c != "-" for c in cells):  # a phase not run (--phases) leaves no row
            rows.append([metric, target, *cells])

    def ratio(value: float) -> str:
        if math.isnan(value):
            return "n/a"
        return f"{value:.0%}" + _verdict(value, value >= t["ingest_ratio"])

    late = t["lateness_p99_ms"]
    row(
        "release lateness, ms: p50 / p99 / max, all streams",
        f"p99 <= {late:g}",
        lambda r: _dist(r["lateness"]["late_ms"], late),
    )
    row(
        "  same, streams in quiet windows only",
        f"p99 <= {late:g}",
        lambda r: _dist(r["lateness"]["late_quiet_ms"], late),
    )
    row(
        "  server part: event ts - predicted end, p50 / p99",
        "",
        lambda r: "{} / {}".format(*(_ms(r["lateness"]["server_ms"][k]) for k in ("p50", "p99"))),
    )
    row(
        "  delivery part: receipt - event ts, p50 / p99",
        "",
        lambda r: "{} / {}".format(*(_ms(r["lateness"]["deliver_ms"][k]) for k in ("p50", "p99"))),
    )
    row(
        "  releases/s; released early; duplicate playback_done",
        "0; 0",
        lambda r: "{:.0f}/s; {}; {}".format(
            r["lateness"]["releases_per_s"], r["lateness"]["early"], r["lateness"]["duplicates"]
        ),
    )
    chunk = t["chunk_p99_ms"]

    def chunk_all(r: dict[str, Any]) -> str:
        text = _dist(r["latency"]["latency_ms"], chunk)
        if r["latency"]["overloaded_after"] is not None:
            text += " OVERLOADED: stopped after {} chunks, >2 s unanswered".format(
                r["latency"]["overloaded_after"]
            )
        return text

    row("chunk latency, ms: p50 / p99 / max, all receipts", f"p99 <= {chunk:g}", chunk_all)
    row(
        "  same, receipts in quiet windows only",
        f"p99 <= {chunk:g}",
        lambda r: _dist(r["latency"]["latency_quiet_ms"], chunk),
    )
    row(
        "  POSTs/s achieved; daphne CPU (ms per chunk); missing; out of order",
        f"{args.rate:g}; ; 0; 0",
        lambda r: "{:.1f}; {:.0f}% ({:.2f}); {}; {}".format(
            r["latency"]["achieved_rate"],
            r["latency"]["server_cpu_pct"],
            r["latency"]["server_cpu_ms_per_chunk"],
            r["latency"]["missing"],
            r["latency"]["out_of_order"],
        ),
    )
    row(
        "ingest POST /audio, chunks/s (mean of all rounds)",
        "",
        lambda r: "{:.0f}".format(r["throughput"]["ingest_per_s"]),
    )
    row(
        "bare async view, same API handler as /audio, req/s (mean of all rounds)",
        "",
        lambda r: "{:.0f}".format(r["throughput"]["bare_per_s"]),
    )
    row(
        "bare async view, Django's default middleware (stock project), req/s",
        "",
        lambda r: "{:.0f}".format(r["throughput"].get("stock_per_s", math.nan)),
    )
    row(
        "  ingest / stock bare view (for reference)",
        "",
        lambda r: "{:.0%}".format(r["throughput"].get("stock_ratio", math.nan)),
    )
    row(
        "ingest / bare, all rounds",
        f">= {t['ingest_ratio']:.0%}",
        lambda r: ratio(r["throughput"]["ratio"]),
    )
    row(
        "ingest / bare, quiet rounds only (quiet / all)",
        f">= {t['ingest_ratio']:.0%}",
        lambda r: "{} ({} / {})".format(
            ratio(r["throughput"]["quiet_ratio"]),
            r["throughput"]["quiet_rounds"],
            r["throughput"]["rounds"],
        ),
    )

    def cpu(r: dict[str, Any]) -> str:
        per = {
            kind: sum(x["server_cpu_ms_per_req"] for x in runs) / len(runs)
            for kind, runs in r["throughput"]["runs"].items()
        }
        return f"{per['bare']:.2f} / {per.get('stock', math.nan):.2f} / {per['ingest']:.2f}"

    row("  daphne CPU ms per request: bare / stock bare / ingest", "", cpu)
    row("  wrk errors (non-2xx, timeouts)", "0", lambda r: str(r["throughput"]["errors"]))
    ws_rate, ws_ratio = t["ws_per_s"], t["ws_ratio"]
    for kind in args.ws_frames:

        def ws_ingest(r: dict[str, Any], kind: str = kind) -> str:
            value = r["ws"]["kinds"][kind]["ingest_per_s"]
            goal = ws_rate.get(r["backend"], math.nan)
            return f"{value:.0f}" + _verdict(value, value >= goal)

        def ws_share(r: dict[str, Any], kind: str = kind) -> str:
            value = r["ws"]["kinds"][kind]["ratio"]
            return (
                "n/a" if math.isnan(value) else f"{value:.0%}" + _verdict(value, value >= ws_ratio)
            )

        what = "raw PCM binary frames" if kind == "binary" else "JSON frames, base64 data"
        row(
            f"WS /ws/audio ingest, {what}: acked chunks/s "
            f"({args.ws_speakers} sockets, window {args.ws_window}, {args.ws_chunk_ms} ms chunks)",
            ">= {:g} embedded, >= {:g} PostgreSQL".format(ws_rate["embedded"], ws_rate["postgres"]),
            ws_ingest,
        )
        row(
            "  yardstick: bare daphne WS echo of the same frames, msgs/s",
            "",
            lambda r, kind=kind: "{:.0f}".format(r["ws"]["kinds"][kind]["echo_per_s"]),
        )
        row("  WS ingest / echo", f">= {ws_ratio:.0%}", ws_share)
        row(
            "  daphne CPU ms per message: echo / ingest; bad acks",
            "; 0",
            lambda r, kind=kind: "{:.3f} / {:.3f}; {}".format(
                r["ws"]["kinds"][kind]["echo_cpu_ms"],
                r["ws"]["kinds"][kind]["ingest_cpu_ms"],
                r["ws"]["kinds"][kind]["bad"],
            ),
        )

    def noise(r: dict[str, Any]) -> str:
        parts = []
        if "lateness" in r:
            parts.append(f"{r['lateness']['others_pct']:.0f}")
        if "latency" in r:
            parts.append(f"{r['latency']['others_pct']:.0f}")
        if "throughput" in r:
            runs = [x["others_pct"] for xs in r["throughput"]["runs"].values() for x in xs]
            parts.append(f"{max(runs):.0f}")
        if "ws" in r:
            parts.append(f"{max(k['others_pct'] for k in r['ws']['kinds'].values()):.0f}")
        return " / ".join(parts) + "%"

    row(
        "Python speed before each phase, M loop iterations/s",
        "",
        lambda r: " / ".join(f"{v:.1f}" for v in r["speed"].values()),
    )
    row(
        "other processes' CPU, % of machine: lateness / latency / wrk (max) / ws (max)",
        f"< {QUIET_PCT:g}",
        noise,
    )
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]

    def fmt(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    lines = [
        f"Parley core benchmark, {machine['date']}, commit {machine['commit']}",
        f"{machine['nproc']} x {machine['cpu']}, {machine['ram']} RAM, Python {machine['python']}",
        f"load: lateness {args.streams} streams in {args.rooms} rooms (1 spectator each); "
        f"latency {args.rate:g} chunks/s of {args.chunk_ms} ms, {args.spectators} spectators; "
        f"wrk -t{args.wrk_connections} -c{args.wrk_connections}, {args.wrk_seconds:g} s runs; "
        f"ws {args.ws_speakers} sockets, window {args.ws_window}, {args.ws_seconds:g} s runs"
        + (f"; bench, daphne and wrk at nice {machine['nice']}" if machine["nice"] else ""),
        f"quiet = other processes under {QUIET_PCT:g}% of the machine from {QUIET_MARGIN_S:g} s "
        "before a sample until its end (wrk: during both runs of a pair)",
        "",
        fmt(header),
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        *(fmt(r) for r in rows),
    ]
    return "\n".join(lines)


def write_docs(table: str, command: str) -> None:
    """Replace the results block of our section; other benches own the other sections."""
    header, _, rows = table.partition("\n\n")
    lines = [f"{line}  " for line in header.splitlines()]  # Markdown line breaks
    block = "\n".join(
        [BLOCK_START, "", f"Command: `{command}`  ", *lines, "", rows.rstrip("\n"), "", BLOCK_END]
    )
    current = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    if BLOCK_START in current and BLOCK_END in current:
        head, rest = current.split(BLOCK_START, 1)
        updated = head + block + rest.split(BLOCK_END, 1)[1]
    elif HEADING in current:
        head, rest = current.split(HEADING, 1)
        updated = f"{head}{HEADING}\n\n{block}\n{rest}"
    else:
        title, _, others = current.partition("\n")
        updated = f"{title}\n\n{HEADING}\n\n{block}\n\n{others.lstrip(chr(10))}"
    DOCS.write_text(updated.rstrip("\n") + "\n")
    log(f"wrote the results block of {HEADING!r} in {DOCS}")


# --- command line -------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.core", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--backends",
        default="embedded,postgres",
        help=f"comma-separated, from {', '.join(BACKENDS)} (default: embedded,postgres)",
    )
    parser.add_argument(
        "--phases",
        default=",".join(PHASES),
        help=f"comma-separated subset of {','.join(PHASES)} (wrk = throughput), run in "
        "the order given, e.g. --phases ws,wrk",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--database-url", help="PostgreSQL server (default: $DATABASE_URL)")
    parser.add_argument("--redis-url", help="Redis server (default: $REDIS_URL)")
    parser.add_argument("--streams", type=int, default=200, help="lateness: streams")
    parser.add_argument("--rooms", type=int, default=4, help="lateness: rooms in parallel")
    parser.add_argument(
        "--stagger", type=float, default=0.1, help="lateness: start offset between rooms (s)"
    )
    parser.add_argument(
        "--gap",
        type=float,
        nargs=2,
        default=(0.05, 0.25),
        metavar=("MIN", "MAX"),
        help="lateness: random pause between a room's streams (s)",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="latency: chunks per second")
    parser.add_argument("--chunk-ms", type=int, default=10, help="latency: audio per chunk (ms)")
    parser.add_argument("--spectators", type=int, default=20, help="latency: spectators")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--latency-warmup", type=float, default=1.0)
    parser.add_argument("--wrk-seconds", type=float, default=10.0)
    parser.add_argument("--wrk-warmup", type=float, default=2.0)
    parser.add_argument("--wrk-connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="throughput: bare/ingest rounds")
    parser.add_argument(
        "--extra-rounds",
        type=int,
        default=1,
        help="throughput: up to this many more rounds while fewer than --rounds were quiet",
    )
    parser.add_argument("--chunks-per-stream", type=int, default=50, help="throughput")
    parser.add_argument("--ws-speakers", type=int, default=8, help="ws: sockets at once")
    parser.add_argument(
        "--ws-window", type=int, default=32, help="ws: frames each socket sends ahead of answers"
    )
    parser.add_argument("--ws-chunk-ms", type=int, default=20, help="ws: audio per chunk (ms)")
    parser.add_argument("--ws-seconds", type=float, default=5.0, help="ws: measured seconds")
    parser.add_argument("--ws-warmup", type=float, default=1.0, help="ws: unmeasured start (s)")
    parser.add_argument("--ws-rounds", type=int, default=2, help="ws: echo/ingest rounds")
    parser.add_argument(
        "--ws-frames", default="binary,json", help="ws: frame kinds, from binary,json"
    )
    parser.add_argument("--daphne-args", default="", help="extra daphne arguments, e.g. -v0")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", metavar="DIR", help="py-spy record each phase into DIR")
    parser.add_argument(
        "--profile-gil", action="store_true", help="py-spy --gil: only the GIL holder"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="before each phase, wait up to S seconds for other processes to go quiet",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        metavar="N",
        help="run the bench, its daphne and wrk at this niceness (negative needs root): "
        "on a shared machine, -10 keeps other people's jobs from stealing the CPU mid-phase",
    )
    parser.add_argument(
        "--write-docs", action="store_true", help="put the table into docs/benchmarks.md"
    )
    parser.add_argument("--json", metavar="FILE", help="also write every number to FILE")
    args = parser.parse_args(argv)
    if args.quick:
        args.streams, args.latency_seconds, args.latency_warmup = 48, 3.0, 0.5
        args.wrk_seconds, args.wrk_warmup, args.rounds, args.extra_rounds = 3.0, 1.0, 1, 0
        args.ws_seconds, args.ws_warmup, args.ws_rounds = 2.0, 0.5, 1
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    args.phases = [
        PHASE_ALIASES.get(p.strip(), p.strip()) for p in args.phases.split(",") if p.strip()
    ]
    args.ws_frames = [k.strip() for k in args.ws_frames.split(",") if k.strip()]
    if set(args.phases) - set(PHASES):
        parser.error(f"unknown phase(s): {', '.join(sorted(set(args.phases) - set(PHASES)))}")
    if set(args.ws_frames) - {"binary", "json"}:
        parser.error("--ws-frames takes binary and/or json")
    unknown = set(args.backends) - set(BACKENDS)
    if unknown:
        parser.error(f"unknown backend(s): {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    Profiler.gil = args.profile_gil
    if args.nice:
        os.nice(args.nice)  # inherited by daphne, wrk and manage.py migrate
    machine = machine_info()
    machine["nice"] = os.nice(0)
    started = time.monotonic()
    results = [run_backend(name, args) for name in args.backends]
    log(f"done in {time.monotonic() - started:.0f} s")
    table = render(results, machine, args)
    print(table)
    if args.write_docs:
        write_docs(
            table, "python -m bench.core " + " ".join(argv if argv is not None else sys.argv[1:])
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
