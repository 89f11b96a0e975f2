"""Group commit of recording chunks (issue 11 §2): chunks that wait while a commit is in flight
go in the next one, across the worker's sessions; each is acknowledged only once its group is
durable, in the order sent; a refused chunk fails only itself. In process (the services and
/ws/streaming through the ASGI app) and over a real server SIGKILLed mid-stream, on the
suite's leg (SQLite, or PostgreSQL + Redis)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import socketio
import websockets
from channels.db import database_sync_to_async

from recordings import services
from recordings.commit import group_commit
from recordings.formats import parse_format
from recordings.models import Recording
from streams.errors import ApiError
from streams.models import Chunk
from tests.recordings.clients import NAMESPACE, pcm, wav_info
from tests.recordings.conftest import ws_open
from tests.support.parley_server import running_server
from tests.support.servers import PARLEY_SERVER, DaphneProcess

pytestmark = pytest.mark.timeout(180)
RECEIVED = ("response", {"message": "received chunk"})


def _open(sid: str) -> Recording:
    recording, _ = services.recording_open(
        sid=sid, transport="websocket", fmt=parse_format({}), base_url="http://t", speaker="eve"
    )
    return recording


def _stored(sid: str) -> list[tuple[int, bytes]]:
    rows = Chunk.objects.filter(stream__stream_id=sid).order_by("seq").values_list("seq", "data")
    return [(seq, bytes(data)) for seq, data in rows]


@pytest.mark.django_db(transaction=True)
def test_one_group_of_many_recordings_answers_each_chunk_at_its_place():
    a, b, stopped = _open("grp-a"), _open("grp-b"), _open("grp-stopped")
    services.recording_chunk_add(recording_id=stopped.pk, data=pcm(0.1))
    services.recording_stop(recording_id=stopped.pk)
    ChunkIn = services.ChunkIn
    group = [
        ChunkIn(a.pk, pcm(0.1, start=0)),
        ChunkIn(b.pk, pcm(0.1, start=1)),
        ChunkIn(stopped.pk, pcm(0.1)),  # refused: recording_stopped
        ChunkIn(a.pk, b"\x00" * 3),  # refused: partial_frame
        ChunkIn(a.pk, b""),  # refused: empty_chunk
        ChunkIn(a.pk, pcm(0.1, start=2)),
        ChunkIn(10**9, pcm(0.1)),  # no such recording
        ChunkIn(b.pk, pcm(0.1, start=3)),
        ChunkIn(a.pk, pcm(0.1, start=4)),
    ]
    answers = services.recording_chunks_add(group)
    kinds = [x.code if isinstance(x, ApiError) else type(x).__name__ for x in answers]
    assert kinds == [
        "ChunkAck",
        "ChunkAck",
        "recording_stopped",
        "partial_frame",
        "empty_chunk",
        "ChunkAck",
        "RecordingGone",
        "ChunkAck",
        "ChunkAck",
    ]
    assert [(x.seq, x.received_chunks) for x in answers if isinstance(x, services.ChunkAck)] == [
        (0, 1),
        (0, 1),
        (1, 2),
        (1, 2),
        (2, 3),
    ]
    assert _stored("grp-a") == [
        (0, pcm(0.1, start=0)),
        (1, pcm(0.1, start=2)),
        (2, pcm(0.1, start=4)),
    ]
    assert _stored("grp-b") == [(0, pcm(0.1, start=1)), (1, pcm(0.1, start=3))]
    assert len(_stored("grp-stopped")) == 1
    a_stream = Recording.objects.select_related("stream").get(pk=a.pk).stream
    assert (a_stream.chunk_count, a_stream.total_bytes) == (3, 3 * len(pcm(0.1)))
    assert a_stream.first_arrival_at is not None


@pytest.mark.django_db(transaction=True)
async def test_pipelined_sessions_are_acked_in_order_and_stored_in_order():
    # Three sessions send 40 chunks each without waiting for an answer, with a refused chunk
    # in the middle of each: every answer comes back in the order sent, each session's chunks
    # are stored in its order, and the chunks went in fewer commits than there are chunks.
    before_groups, before_chunks = group_commit.groups, group_commit.chunks
    sessions = [await ws_open() for _ in range(3)]
    sent: dict[str, list[bytes]] = {}
    for n, (_ws, hello) in enumerate(sessions):
        pieces = [pcm(0.02, start=1000 * n + i) for i in range(40)]
        sent[hello["streaming_id"]] = pieces
    for i in range(40):
        for ws, hello in sessions:
            frame = b"\x01" if i == 20 else sent[hello["streaming_id"]][i]
            await ws.communicator.send_input({"type": "websocket.receive", "bytes": frame})
    for ws, hello in sessions:
        answers = [await ws.next(timeout=30) for _ in range(40)]
        assert answers[:20] == [RECEIVED] * 20 and answers[21:] == [RECEIVED] * 19
        assert (answers[20][0], answers[20][1]["error"]) == ("error", "partial_frame")
        assert (await ws.send("stop_recording"))[0] == "result_file_path"
        await ws.disconnect()
        expected = [p for i, p in enumerate(sent[hello["streaming_id"]]) if i != 20]
        rows = await database_sync_to_async(_stored)(hello["streaming_id"])
        assert [seq for seq, _ in rows] == list(range(39))
        assert [data for _, data in rows] == expected
    chunks = group_commit.chunks - before_chunks
    assert chunks == 3 * 40
    assert group_commit.groups - before_groups < chunks


@pytest.mark.django_db(transaction=True)
async def test_a_stop_waits_for_the_chunks_sent_before_it():
    ws, hello = await ws_open()
    pieces = [pcm(0.02, start=i) for i in range(30)]
    for piece in pieces:
        await ws.communicator.send_input({"type": "websocket.receive", "bytes": piece})
    await ws.communicator.send_to(text_data=json.dumps({"event": "stop_recording"}))
    answers = [await ws.next(timeout=30) for _ in range(31)]
    assert answers[:30] == [RECEIVED] * 30
    assert answers[30][0] == "result_file_path"
    await ws.disconnect()
    rows = await database_sync_to_async(_stored)(hello["streaming_id"])
    assert [data for _, data in rows] == pieces


# --- a real server on this leg's database, SIGKILLed with chunks in flight ------------------


async def _pipeline_socketio(url: str, pieces: list[bytes], acks_before_kill: int, kill) -> tuple:
    client = socketio.AsyncClient(reconnection=False)
    answers: asyncio.Queue = asyncio.Queue()

    @client.on("*", namespace=NAMESPACE)
    async def any_event(event: str, data=None) -> None:
        await answers.put((event, data))

    await client.connect(url, namespaces=[NAMESPACE], transports=["websocket"])
    event, hello = await asyncio.wait_for(answers.get(), 20)
    assert event == "response", hello
    for piece in pieces:  # never waiting for an answer
        await client.emit("audio_chunk", {"chunk": piece}, namespace=NAMESPACE)
    acked = 0
    while acked < acks_before_kill:
        assert await asyncio.wait_for(answers.get(), 30) == RECEIVED
        acked += 1
    kill()
    while not answers.empty():  # answers that reached us before the kill count too
        if answers.get_nowait() == RECEIVED:
            acked += 1
    await client.eio.disconnect(abort=True)
    return hello, acked


async def _pipeline_websocket(ws_url: str, pieces: list[bytes], acks_before_kill: int, kill):
    async with websockets.connect(f"{ws_url}/ws/streaming", max_size=None) as ws:
        hello = json.loads(await ws.recv())
        assert hello["event"] == "response", hello
        for piece in pieces:
            await ws.send(piece)
        acked = 0
        while acked < acks_before_kill:
            message = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert (message["event"], message["data"]) == RECEIVED
            acked += 1
        kill()
        try:
            while True:
                message = json.loads(await asyncio.wait_for(ws.recv(), 2))
                if (message["event"], message["data"]) == RECEIVED:
                    acked += 1
        except (websockets.ConnectionClosed, TimeoutError):
            pass
        return hello["data"], acked


@pytest.mark.parametrize("transport", ["socketio", "websocket"])
def test_every_acked_chunk_survives_a_sigkilled_worker(transport):
    pieces = [pcm(0.02, start=320 * i) for i in range(200)]
    with running_server(require_auth=False) as server:

        def kill() -> None:
            server.daphne.kill()

        if transport == "socketio":
            run = _pipeline_socketio(server.url, pieces, 60, kill)
        else:
            run = _pipeline_websocket(server.ws_url, pieces, 60, kill)
        hello, acked = asyncio.run(run)
        server.daphne.stop()
        again = DaphneProcess(env=server.env, server=PARLEY_SERVER, name="parley-again")
        try:
            stop = httpx.post(
                f"{again.url}/streaming/force_stop",
                headers={"X-Streaming-Key": hello["streaming_key"]},
                timeout=60,
            )
            assert stop.status_code == 200, stop.text
            sid = hello["streaming_id"]
            body = httpx.get(f"{again.url}/static/audio/{sid}.wav", timeout=60).content
        finally:
            again.stop()
    frames = wav_info(body)[3]
    # Every acknowledged chunk is there, in order; chunks in flight at the kill may be too.
    assert acked >= 60
    assert frames.startswith(b"".join(pieces[:acked]))
    assert frames == b"".join(pieces[: len(frames) // len(pieces[0])])
