"""Turns and spectator churn leave nothing behind in the process (issue 8 §4: RSS flat).

The soak's workers grew under saturation (docs/benchmarks.md "Soak"); this is the
in-process check that the growth is not per-turn or per-connection state: after a warm-up,
many more turns with a spectator joining and leaving around each leave the traced Python
heap within a fixed bound, and the hub, the runtime and presence back at zero.
"""

from __future__ import annotations

import asyncio
import gc
import tracemalloc

import httpx
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from spectate import consumers
from spectate.hub import hub
from streams.models import SpectatorPresence, Turn
from streams.runtime import runtime
from tests.conftest import b64, pcm

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(600)]

WARMUP = 20
ROUNDS = 100
CHUNK = b64(pcm(0.02))


async def one_round(client: httpx.AsyncClient, n: int) -> None:
    """A spectator joins room r<n % 5>, a 2-chunk turn plays in it, the spectator leaves."""
    room = f"r{n % 5}"
    spectator = WebsocketCommunicator(application, f"/spectate/ws?room={room}")
    connected, _ = await spectator.connect(timeout=30)
    assert connected
    assert (await spectator.receive_json_from(timeout=30))["type"] == "state"
    for seq in range(2):
        body = {"stream_id": f"m{n}", "seq": seq, "room": room, "speaker": "alice"}
        while True:
            response = await client.post("/audio", json={**body, "data": CHUNK, "done": seq == 1})
            if response.status_code != 409:  # the room's previous turn not yet released
                break
            await asyncio.sleep(0.02)
        assert response.status_code == 200, response.text
    while (await spectator.receive_json_from(timeout=30))["type"] != "playback_done":
        pass
    await spectator.disconnect()


async def settle() -> None:
    for _ in range(200):
        if not consumers._leaving and not hub._rooms and not runtime.local_spectators:
            break
        await asyncio.sleep(0.05)
    gc.collect()


async def test_turns_and_spectator_churn_leave_the_heap_flat():
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        tracemalloc.start(8)
        try:
            for n in range(0, WARMUP, 5):  # five rooms at a time
                await asyncio.gather(*(one_round(client, n + k) for k in range(5)))
            await settle()
            before = tracemalloc.take_snapshot()
            for n in range(WARMUP, WARMUP + ROUNDS, 5):
                await asyncio.gather(*(one_round(client, n + k) for k in range(5)))
            await settle()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    grown = after.compare_to(before, "traceback")
    net = sum(stat.size_diff for stat in grown)
    top = "\n".join(
        f"{stat.size_diff:+} B {stat.count_diff:+} blocks\n  "
        + "\n  ".join(stat.traceback.format(limit=4))
        for stat in grown[:8]
    )
    print(f"traced heap after {ROUNDS} rounds: {net:+} B net\n{top}")
    # A per-round leak of one spectator's or turn's state (a consumer, its queue, a presence
    # or hub entry, a timer) is several KiB: 100 rounds would show over 256 KiB. Allow caches
    # that fill once (psycopg's prepared statements, Django's query compiler) to settle.
    assert net < 256 * 1024, top
    assert not hub._rooms and not runtime.local_spectators and not consumers._leaving
    # Only claims' lease timers are left: each fires once at its lease's end, finds its
    # turn released, and is dropped (bounded by the turns of one lease, 30 s).
    assert {kind for kind, _ in runtime._timers} <= {"expire"}
    assert await database_sync_to_async(SpectatorPresence.objects.count)() == 0
    statuses = await database_sync_to_async(
        lambda: set(Turn.objects.values_list("status", flat=True))
    )()
    assert statuses == {"released"}


def test_the_memory_dump_hook_writes_on_sigusr2(tmp_path, monkeypatch):
    """config/server.py's opt-in hook (what bench/soak.py --memory-dump drives)."""
    import json
    import os
    import signal

    from config.server import install_memory_dump

    previous = signal.getsignal(signal.SIGUSR2)
    monkeypatch.setenv("PARLEY_MEMORY_DUMP", str(tmp_path))
    monkeypatch.setenv("PARLEY_TRACEMALLOC_FRAMES", "2")
    try:
        install_memory_dump()
        os.kill(os.getpid(), signal.SIGUSR2)  # idle: writes, then starts tracing
        assert tracemalloc.is_tracing()
        os.kill(os.getpid(), signal.SIGUSR2)
    finally:
        signal.signal(signal.SIGUSR2, previous)
        tracemalloc.stop()
    pid = os.getpid()
    first = json.loads((tmp_path / f"{pid}-1.json").read_text())
    second = json.loads((tmp_path / f"{pid}-2.json").read_text())
    assert first["proc_kib"]["VmRSS"] > 0 and first["tracemalloc"] is None
    assert second["tracemalloc"]["current"] > 0
    # Python reports pymalloc only while it is the allocator, not under tracemalloc's hooks.
    assert first["pymalloc"]["arenas allocated current"] > 0 and second["pymalloc"] == {}
    assert second["mallinfo2"]["uordblks"] > 0 and second["by_type"]
    assert (tmp_path / f"{pid}-2.tracemalloc").exists()
    assert not (tmp_path / f"{pid}-1.tracemalloc").exists()
