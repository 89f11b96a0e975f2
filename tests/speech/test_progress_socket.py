"""A progress socket whose client leaves right after the final update: the late messages are
dropped quietly, never "Exception inside application" (daphne's send on a closed protocol)."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import websockets

ROUNDS = 5
PARALLEL = 4
LOG_FAILURES = ("Exception inside application", "Traceback")


async def speak_and_leave(base: str, ws_base: str, number: int) -> bool:
    """Stream one speech job, follow it on its progress socket and close that socket as soon
    as the SSE stream says done. True if the job finished."""
    body = {"input": f"Hello number {number}. A second sentence here.", "stream_format": "sse"}
    socket = None
    done = False
    async with (
        httpx.AsyncClient(timeout=60) as client,
        client.stream("POST", f"{base}/v1/audio/speech", json=body) as response,
    ):
        assert response.status_code == 200, await response.aread()
        async for line in response.aiter_lines():
            if line.startswith("data:") and socket is None:
                job = json.loads(line[5:])["job_id"]
                socket = await websockets.connect(f"{ws_base}/v1/status/progress/{job}/ws")
            if "speech.audio.done" in line:
                done = True
                if socket is not None:
                    await socket.close()
    if socket is not None:
        await socket.close()
    return done


def test_closing_right_after_done_logs_no_exception(daphne):
    start = len(daphne.log())

    async def scenario() -> list[bool]:
        results: list[bool] = []
        for _ in range(ROUNDS):
            results += await asyncio.gather(
                *(speak_and_leave(daphne.url, daphne.ws_url, i) for i in range(PARALLEL))
            )
        return results

    assert all(asyncio.run(scenario()))
    time.sleep(1.0)  # daphne logs the application's exception once its consumer ends
    log = daphne.log()[start:]
    for failure in LOG_FAILURES:
        assert failure not in log, log[-3000:]
