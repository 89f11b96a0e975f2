"""The seed's Socket.IO client and a plain WebSocket client against a real daphne process
running the embedded default (SQLite, in-memory layers), whatever DATABASE_URL says."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.recordings.clients import (
    CHUNKS_SQL,
    TENTH_BYTES,
    SioSession,
    WsSession,
    check_kept,
    close_enough,
    encoded_audio,
    pcm,
    record_then_kill,
    split,
    start_embedded,
    wav_info,
)
from tests.support.servers import DaphneProcess

pytestmark = pytest.mark.timeout(60)


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


async def test_oversized_chunk_over_long_polling_gets_a_clear_error(server):
    # Over the websocket transport daphne itself refuses frames above 1 MiB.
    client = SioSession()
    await client.connect(server.url, transports=("polling",))
    event, payload = await client.chunk(b"\x00" * (1024 * 1024 + 2))
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
