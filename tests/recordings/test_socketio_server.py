"""The seed's Socket.IO client and a plain WebSocket client against a real daphne process
running the embedded default (SQLite, in-memory layers), whatever DATABASE_URL says."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.recordings.clients import (
    CHUNKS_SQL,
    TENTH_BYTES,
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
    start_embedded,
    wav_info,
)
from tests.support.servers import DaphneProcess

pytestmark = pytest.mark.timeout(180)  # generous: ffmpeg and two workers on a loaded machine


@pytest.fixture(scope="module")
def var_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recordings-var")


@pytest.fixture(scope="module")
def processes(var_dir: Path) -> Iterator[list[DaphneProcess]]:
    started = start_embedded(var_dir, count=2)
    yield started
    for process in started:
        process.stop()


@pytest.fixture
def server(processes: list[DaphneProcess]) -> DaphneProcess:
    return processes[0]


async def test_an_unchanged_seed_client_records_stops_and_downloads(server):
    client = SioSession()
    connected = await client.connect(server.url)
    assert connected["message"] == "Connected to server"
    sid = client.client.get_sid("/streaming")
    assert connected["streaming_id"] == sid and connected["streaming_key"]
    sent = [pcm(0.1, start=n * 1600) for n in range(10)]
    for piece in sent:
        assert await client.chunk(piece) == ("response", {"message": "received chunk"})
    assert await client.stop() == (
        "result_file_path",
        {
            "streaming_id": sid,
            "message": "Disconnected from server",
            "file_url": f"http://127.0.0.1:{server.port}/static/audio/{sid}.wav",
        },
    )
    await client.close()
    async with httpx.AsyncClient() as http:
        whole = await http.get(f"{server.url}/static/audio/{sid}.wav")
        assert whole.status_code == 200
        assert whole.headers["content-type"] == "audio/wav"
        assert whole.headers["accept-ranges"] == "bytes"
        assert int(whole.headers["content-length"]) == 44 + 10 * TENTH_BYTES
        assert wav_info(whole.content) == (16000, 1, 2, b"".join(sent))
        part = await http.get(whole.url, headers={"Range": "bytes=44-1043"})
        assert part.status_code == 206
        assert part.headers["content-range"] == f"bytes 44-1043/{len(whole.content)}"
        assert part.content == whole.content[44:1044]
        outside = await http.get(whole.url, headers={"Range": "bytes=999999-"})
        assert outside.status_code == 416
        assert outside.headers["content-range"] == f"bytes */{len(whole.content)}"


async def test_every_force_stop_answer_of_the_seed(server):
    url = f"{server.url}/streaming/force_stop"
    async with httpx.AsyncClient() as http:
        for attempt in (
            http.post(url),
            http.post(url, headers={"X-Streaming-Key": "not-a-key"}),
            http.post(url, json={"streaming_key": "not-a-key"}),
        ):
            response = await attempt
            assert (response.status_code, response.json()) == (
                400,
                {"error": "Invalid streaming key"},
            )
        client = SioSession()
        key = (await client.connect(server.url))["streaming_key"]
        empty = await http.post(url, headers={"X-Streaming-Key": key})
        assert (empty.status_code, empty.json()) == (400, {"error": "Audio buffer is empty"})
        await client.chunk(pcm(0.2))
        done = await http.post(url, data={"streaming_key": key})
        assert (done.status_code, done.json()) == (200, {"message": "Audio processing complete"})
        # The client hears where its file is, and takes no more audio.
        event, payload = await client.next()
        assert event == "result_file_path" and payload["file_url"].endswith(".wav")
        assert (await client.chunk(pcm(0.1)))[1]["error"] == "recording_stopped"
        await client.close()

        broken = SioSession()
        key = (await broken.connect(server.url, auth={"format": "webm"}))["streaming_key"]
        await broken.chunk(b"this is not a webm file" * 10)
        failed = await http.post(url, headers={"X-Streaming-Key": key})
        assert (failed.status_code, failed.json()) == (500, {"error": "Failed to process audio"})
        await broken.close()


async def test_bad_socketio_input_gets_an_error_never_a_crash(server):
    refused = SioSession()
    with pytest.raises(Exception, match="One or more namespaces failed to connect"):
        await refused.connect(server.url, auth={"format": "flac"})
    assert refused.connect_error["data"]["error"] == "invalid_format"
    not_a_name = SioSession()
    with pytest.raises(Exception, match="One or more namespaces failed to connect"):
        await not_a_name.connect(server.url, auth={"room": 5})
    assert not_a_name.connect_error["data"]["error"] == "invalid_room"

    client = SioSession()
    await client.connect(server.url, query="sample_rate_hz=8000&channels=2")
    for bad, error in [
        ("a string", "invalid_chunk"),
        (12, "invalid_chunk"),
        (b"", "empty_chunk"),
        (b"\x00" * 6, "partial_frame"),  # 8 kHz stereo 16-bit frames are 4 bytes
    ]:
        event, payload = await client.chunk(bad)
        assert (event, payload["error"]) == ("error", error), payload
    await client.emit("audio_chunk", "no dict at all")
    assert (await client.next())[1]["error"] == "invalid_chunk"
    await client.emit("no_such_event", {})
    assert (await client.next())[1]["error"] == "unknown_event"
    assert await client.chunk(pcm(0.05, rate=8000, channels=2)) == (
        "response",
        {"message": "received chunk"},
    )
    await client.close()


@pytest.mark.parametrize("transport", ["polling", "websocket"])
async def test_oversized_chunk_gets_a_clear_error_and_the_session_goes_on(server, transport):
    # Issue 10 §5: over long-polling engine.io answered 400, over a websocket daphne closed
    # with 1009 (a frame over its 1 MiB cap), before our own check could answer.
    client = SioSession()
    await client.connect(server.url, transports=(transport,))
    for size in (1024 * 1024 + 2, 3 * 1024 * 1024):
        event, payload = await client.chunk(b"\x00" * size)
        assert (event, payload["error"]) == ("error", "chunk_too_large")
    assert (await client.chunk(pcm(0.1)))[0] == "response"
    await client.close()


async def test_browser_webm_opus_is_decoded_to_the_right_duration(server):
    client = SioSession()
    await client.connect(server.url, auth={"format": "audio/webm;codecs=opus"})
    for piece in split(encoded_audio("webm", 2.5), 1500):
        assert (await client.chunk(piece))[0] == "response"
    event, payload = await client.stop()
    assert event == "result_file_path"
    await client.close()
    async with httpx.AsyncClient() as http:
        body = (await http.get(payload["file_url"])).content
    rate, channels, width, frames = wav_info(body)
    assert (rate, channels, width) == (48000, 1, 2)
    assert close_enough(len(frames) / (rate * channels * width), 2.5)


async def test_plain_websocket_records_stops_and_downloads(server):
    session, connected = await WsSession.open(server.ws_url, "sample_rate_hz=24000")
    assert connected["message"] == "Connected to server"
    sent = [pcm(0.1, rate=24000, start=n) for n in range(5)]
    for piece in sent:
        assert await session.chunk(piece) == ("response", {"message": "received chunk"})
    event, payload = await session.send_event("stop_recording")
    assert event == "result_file_path"
    assert payload["streaming_id"] == connected["streaming_id"]
    assert payload["message"] == "Disconnected from server"
    await session.close()
    async with httpx.AsyncClient() as http:
        body = (await http.get(payload["file_url"])).content
    assert wav_info(body) == (24000, 1, 2, b"".join(sent))


async def test_acknowledged_chunks_survive_a_sigkilled_worker(processes, var_dir):
    server, doomed = processes
    client, hello, acked = await record_then_kill(doomed, 25)
    with sqlite3.connect(var_dir / "parley.sqlite3") as db:
        rows = db.execute(CHUNKS_SQL.format("?"), (hello["streaming_id"],)).fetchall()
    await check_kept(rows, acked, server, hello)
    await client.client.eio.disconnect(abort=True)


# --- container recordings heard live in a room (decoded by ffmpeg as they arrive) -----------

WEBM = "audio/webm;codecs=opus"
MEDIARECORDER_PIECE = 1500  # about 250 ms of 32 kb/s Opus: a MediaRecorder timeslice


def live_decoders(pid: int) -> list[int]:
    """Live-decoding ffmpeg processes (raw s16le to a pipe) of a worker, zombies included.

    The file's own decode (to a .wav, run again on a disconnect after a failure) is not one."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) == pid and (b"s16le" in argv or fields[0] == "Z"):
            found.append(int(entry))
    return found


def live_stream_row(var_dir: Path, stream_id: str) -> tuple[str, int, int]:
    with sqlite3.connect(var_dir / "parley.sqlite3") as db:
        return db.execute(
            "SELECT status, chunk_count, duration_ms FROM streams_stream WHERE stream_id = ?",
            (stream_id,),
        ).fetchone()


async def final_chunk_count(var_dir: Path, stream_id: str, timeout: float = 30.0) -> int:
    """A live stream's chunk count once it is no longer streaming (the decoder flushed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = live_stream_row(var_dir, stream_id)
        if row is not None and row[0] not in ("streaming", "awaiting_gaps"):
            return row[1]
        assert asyncio.get_running_loop().time() < deadline, f"still {row}"
        await asyncio.sleep(0.1)


async def decoders_reaped(pid: int, timeout: float = 15.0) -> bool:
    """True once the worker has no live decoder left (reaping follows a close shortly)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while live_decoders(pid):
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def saved_wav_seconds(file_url: str) -> float:
    async with httpx.AsyncClient() as http:
        rate, channels, width, frames = wav_info((await http.get(file_url)).content)
    assert (rate, channels, width) == (48000, 1, 2)
    return len(frames) / (rate * channels * width)


async def test_a_socketio_webm_recording_is_heard_live_in_its_room(server, var_dir):
    spectator = await Spectator.open(server.ws_url, "live-sio")
    client = SioSession()
    hello = await client.connect(server.url, auth={"format": WEBM, "room": "live-sio"})
    live_id = f"{hello['streaming_id']}:live"
    pieces = split(encoded_audio("webm", 2.5), MEDIARECORDER_PIECE)
    for piece in pieces:
        assert await client.chunk(piece) == ("response", {"message": "received chunk"})
    # Live: the room hears all but the decoder's last packet before the recording stops.
    await spectator.heard(live_id, 2.4)
    event, payload = await client.stop()
    assert event == "result_file_path", payload
    await spectator.heard(live_id, 2.5)
    pcm_bytes = check_live_chunks(spectator.chunks(live_id), live_id, "recorder")
    assert close_enough(len(pcm_bytes) / 96000, 2.5, 0.045)
    assert close_enough(await saved_wav_seconds(payload["file_url"]), 2.5)
    await client.close()
    await spectator.close()
    status, chunks, duration_ms = live_stream_row(var_dir, live_id)
    assert (status, chunks) == ("played", len(spectator.chunks(live_id)))
    assert duration_ms == round(len(pcm_bytes) / 96)
    assert await decoders_reaped(server.pid)


async def test_a_plain_websocket_webm_recording_is_heard_live_in_its_room(server):
    spectator = await Spectator.open(server.ws_url, "live-ws")
    session, hello = await WsSession.open(server.ws_url, "format=webm&room=live-ws&speaker=ann")
    live_id = f"{hello['streaming_id']}:live"
    for piece in split(encoded_audio("webm", 1.5), MEDIARECORDER_PIECE):
        assert await session.chunk(piece) == ("response", {"message": "received chunk"})
    await session.close()  # disconnect saves it, and flushes the decoder first
    await spectator.heard(live_id, 1.5)
    pcm_bytes = check_live_chunks(spectator.chunks(live_id), live_id, "ann")
    assert close_enough(len(pcm_bytes) / 96000, 1.5, 0.045)
    async with httpx.AsyncClient() as http:
        for _ in range(100):  # the file is built after the disconnect
            detail = (await http.get(f"{server.url}/api/recordings/{hello['streaming_id']}")).json()
            if detail["status"] != "processing":
                break
            await asyncio.sleep(0.1)
    assert detail["status"] == "complete" and detail["room"] == "live-ws"
    assert close_enough(detail["duration_ms"] / 1000, 1.5)
    await spectator.close()


async def test_garbage_declared_as_webm_gets_one_error_and_keeps_recording(server, var_dir):
    spectator = await Spectator.open(server.ws_url, "live-garbage")
    client = SioSession()
    hello = await client.connect(server.url, auth={"format": "webm", "room": "live-garbage"})
    garbage = [b"this is not a webm file, just bytes " * 40 for _ in range(20)]  # 28 kB
    errors = []
    for piece in garbage:
        await client.emit("audio_chunk", {"chunk": piece})
        while (answer := await client.next())[0] == "error":
            errors.append(answer[1])
        assert answer == ("response", {"message": "received chunk"})
    if not errors:
        # ffmpeg gives up after about 10 kB and its error is sent at once; on a loaded
        # machine "at once" can be after the last answer, so wait for it (generously).
        errors.append((await client.next(timeout=20))[1])
    assert [e["error"] for e in errors] == ["live_decode_failed"], errors
    assert errors[0]["detail"]
    # Still recording; the file cannot be built from garbage, but nothing is lost.
    assert await client.chunk(b"more") == ("response", {"message": "received chunk"})
    event, payload = await client.stop()
    assert (event, payload["error"]) == ("error", "processing_failed")
    await client.close()
    with sqlite3.connect(var_dir / "parley.sqlite3") as db:
        rows = db.execute(CHUNKS_SQL.format("?"), (hello["streaming_id"],)).fetchall()
    assert [bytes(data) for _, data in rows] == [*garbage, b"more"]
    assert spectator.chunks(f"{hello['streaming_id']}:live") == []
    await spectator.close()
    assert await decoders_reaped(server.pid)


async def test_a_late_joiner_hears_the_recording_so_far_then_live(server, var_dir):
    early = await Spectator.open(server.ws_url, "live-late")
    client = SioSession()
    hello = await client.connect(server.url, auth={"format": WEBM, "room": "live-late"})
    live_id = f"{hello['streaming_id']}:live"
    pieces = split(encoded_audio("webm", 3.0), MEDIARECORDER_PIECE)
    half = len(pieces) // 2
    for piece in pieces[:half]:
        assert (await client.chunk(piece))[0] == "response"
    await early.heard(live_id, 1.0)
    late = await Spectator.open(server.ws_url, "live-late")
    for piece in pieces[half:]:
        assert (await client.chunk(piece))[0] == "response"
    await client.stop()
    # Both have heard the whole stream once its final chunk count is known and both hold
    # that many chunks (waiting for "about 3 s" could compare one spectator's last chunk
    # with the other's still in flight).
    count = await final_chunk_count(var_dir, live_id)
    for spectator in (early, late):
        await spectator.wait_for(lambda s=spectator: len(s.chunks(live_id)) >= count, 30)
    heard_early, heard_late = early.chunks(live_id), late.chunks(live_id)
    assert len(heard_early) == count
    assert heard_late == heard_early  # the same events, in order, each once
    check_live_chunks(heard_late, live_id, "recorder")
    # The late joiner got a backlog (chunks before it joined) after its state message.
    kinds = [m["type"] for m in late.messages]
    assert kinds[0] == "state" and late.messages[0]["id"] >= heard_late[0]["id"]
    ids = [m["id"] for m in late.messages[1:]]
    assert ids == sorted(set(ids))
    await client.close()
    await early.close()
    await late.close()


async def test_force_stop_ends_the_live_stream_and_reaps_the_decoder(server, var_dir):
    spectator = await Spectator.open(server.ws_url, "live-force")
    client = SioSession()
    hello = await client.connect(server.url, auth={"format": WEBM, "room": "live-force"})
    live_id = f"{hello['streaming_id']}:live"
    for piece in split(encoded_audio("webm", 1.0), MEDIARECORDER_PIECE):
        assert (await client.chunk(piece))[0] == "response"
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{server.url}/streaming/force_stop",
            headers={"X-Streaming-Key": hello["streaming_key"]},
        )
    assert response.status_code == 200
    assert (await client.next())[0] == "result_file_path"
    await spectator.heard(live_id, 1.0)  # the tail too: the session flushed its decoder
    assert await decoders_reaped(server.pid)  # still connected, decoder already gone
    status, chunks, duration_ms = live_stream_row(var_dir, live_id)
    assert status == "played" and chunks == len(spectator.chunks(live_id))
    assert close_enough(duration_ms / 1000, 1.0, 0.045)
    await client.close()
    await spectator.close()
