"""Recording sessions on a real deployment: daphne workers sharing PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from tests.recordings.clients import (
    CHUNKS_SQL,
    SioSession,
    Spectator,
    WsSession,
    check_kept,
    check_live_chunks,
    close_enough,
    encoded_audio,
    pcm,
    record_then_kill,
    split,
    wav_info,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


async def workers(deployment, tmp_path, b_env: dict[str, str] | None = None):
    """Workers a and b, started side by side (each takes seconds to import Django).

    Each keeps files on its own disk, as on separate machines: a file one of them built is
    rebuilt from the database by the other.
    """

    def start(name: str, env: dict[str, str]):
        return deployment.start_worker(PARLEY_RECORDINGS_DIR=str(tmp_path / name), **env)

    return await asyncio.gather(
        asyncio.to_thread(start, "a", {}), asyncio.to_thread(start, "b", b_env or {})
    )


async def test_connect_on_one_worker_force_stop_through_the_other(deployment, tmp_path):
    a, b = await workers(deployment, tmp_path)
    sio = SioSession()
    sio_hello = await sio.connect(a.url)
    ws, ws_hello = await WsSession.open(a.ws_url, "sample_rate_hz=24000")
    sio_audio = [pcm(0.1, start=n) for n in range(8)]
    ws_audio = [pcm(0.1, rate=24000, start=n) for n in range(4)]
    for piece in sio_audio:
        assert await sio.chunk(piece) == ("response", {"message": "received chunk"})
    for piece in ws_audio:
        assert await ws.chunk(piece) == ("response", {"message": "received chunk"})
    async with httpx.AsyncClient() as http:
        for client, hello, audio, rate in [
            (sio, sio_hello, sio_audio, 16000),
            (ws, ws_hello, ws_audio, 24000),
        ]:
            response = await http.post(
                f"{b.url}/streaming/force_stop",
                headers={"X-Streaming-Key": hello["streaming_key"]},
            )
            assert (response.status_code, response.json()) == (
                200,
                {"message": "Audio processing complete"},
            )
            # Worker a's client hears it: through Redis (Socket.IO manager, channel layer).
            event, payload = await client.next()
            assert event == "result_file_path"
            assert payload["streaming_id"] == hello["streaming_id"]
            assert payload["file_url"].startswith(a.url)
            body = (await http.get(payload["file_url"])).content  # built on b, served by a
            assert wav_info(body) == (rate, 1, 2, b"".join(audio))
        listing = (await http.get(f"{b.url}/api/recordings")).json()
    assert {r["status"] for r in listing["results"]} == {"complete"}
    await sio.close()
    await ws.close()


async def test_a_live_webm_recording_force_stopped_through_the_other_worker(deployment, tmp_path):
    """Socket.IO on a, spectator on b, force stop through b: the room hears it all, once."""
    a, b = await workers(deployment, tmp_path)
    spectator = await Spectator.open(b.ws_url, "live-x")
    client = SioSession()
    hello = await client.connect(a.url, auth={"format": "webm", "room": "live-x"})
    live_id = f"{hello['streaming_id']}:live"
    for piece in split(encoded_audio("webm", 2.0), 1500):
        assert await client.chunk(piece) == ("response", {"message": "received chunk"})
    await spectator.heard(live_id, 1.9)
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{b.url}/streaming/force_stop", headers={"X-Streaming-Key": hello["streaming_key"]}
        )
        assert response.status_code == 200, response.text
        event, payload = await client.next()
        assert event == "result_file_path"
        # Worker a's session heard of the stop through Redis and flushed its decoder's tail.
        await spectator.heard(live_id, 2.0)
        body = (await http.get(payload["file_url"])).content
    pcm_bytes = check_live_chunks(spectator.chunks(live_id), live_id, "recorder")
    assert close_enough(len(pcm_bytes) / 96000, 2.0, 0.045)
    rate, channels, width, frames = wav_info(body)
    assert close_enough(len(frames) / (rate * channels * width), 2.0)
    await client.close()
    await spectator.close()


async def test_acknowledged_chunks_survive_a_killed_worker(deployment, tmp_path):
    doomed, survivor = await workers(deployment, tmp_path, {"PARLEY_RECORDING_IDLE_S": "0.5"})
    client, hello, acked = await record_then_kill(doomed, 20)
    rows = deployment.query(CHUNKS_SQL.format("%s"), hello["streaming_id"])
    # Nobody force-stops it: the survivor's sweep saves it after twice the idle timeout.
    status_sql = (
        "SELECT r.status FROM recordings_recording r JOIN streams_stream s "
        "ON s.id = r.stream_id WHERE s.stream_id = %s"
    )
    deadline = time.monotonic() + 10
    while deployment.query(status_sql, hello["streaming_id"]) != [("complete",)]:
        assert time.monotonic() < deadline, "the abandoned recording was not saved"
        await asyncio.sleep(0.2)
    await check_kept(rows, acked, survivor, hello)
    await client.client.eio.disconnect(abort=True)
