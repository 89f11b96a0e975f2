"""Bad input on /ws/agent (issue #7 §6): an error frame with a code and the field, and the
session goes on; only an abusive client is closed."""

from __future__ import annotations

import asyncio
import base64

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator

from config.asgi import application
from tests.agents.conftest import silence, speech_pcm

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def still_alive(client) -> None:
    await client.send(type="session.update", instructions="Be brief.")
    await client.until("session.updated")


@pytest.mark.parametrize(
    ("frame", "code", "field"),
    [
        ({"type": "user.dance"}, "unknown_type", "type"),
        ({"utteranceId": "x"}, "missing_field", "type"),
        ({"type": "user.audio.start"}, "missing_field", "utteranceId"),
        (
            {"type": "user.audio.start", "utteranceId": "a", "format": {"encoding": "opus"}},
            "unsupported_format",
            "format.encoding",
        ),
        (
            {"type": "user.audio.start", "utteranceId": "a", "format": {"sample_rate_hz": 96000}},
            "unsupported_format",
            "format.sample_rate_hz",
        ),
        (
            {"type": "user.audio.start", "utteranceId": "a", "format": {"channels": 6}},
            "unsupported_format",
            "format.channels",
        ),
        ({"type": "user.audio.end", "utteranceId": "a"}, "no_open_utterance", "utteranceId"),
        ({"type": "session.update", "turn_detection": "auto"}, "invalid_turn_detection", None),
        ({"type": "session.update", "vad": {"silence_ms": 1}}, "invalid_vad", "vad.silence_ms"),
        ({"type": "session.update", "voice": "nobody-voice"}, None, "voice"),
        ({"type": "session.update", "colour": "red"}, "unknown_field", "colour"),
        (
            {"type": "session.update", "output_format": {"sample_rate_hz": 7000}},
            "unsupported_format",
            "output_format.sample_rate_hz",
        ),
        ({"type": "text.input", "text": ""}, "invalid_text", "text"),
        ({"type": "text.input", "text": 5}, "invalid_text", "text"),
    ],
)
async def test_a_refused_frame_names_its_code_and_field(agent_connect, frame, code, field):
    client = await agent_connect()
    await client.send(**frame)
    error = await client.until("error")
    if code is not None:
        assert error["code"] == code
    assert error.get("field") == (field or error.get("field"))
    assert error["detail"]
    await still_alive(client)


async def test_invalid_json_bad_base64_and_partial_frames(agent_connect):
    client = await agent_connect()
    await client.send_raw("{not json")
    assert (await client.until("error"))["code"] == "invalid_json"
    await client.send_raw("[1, 2]")
    assert (await client.until("error"))["code"] == "invalid_json"
    await client.send(type="user.audio.start", utteranceId="u")
    await client.send(type="user.audio.chunk", utteranceId="u", sequence=0, audio="***")
    error = await client.until("error")
    assert (error["code"], error["field"]) == ("invalid_audio", "audio")
    await client.send(
        type="user.audio.chunk", utteranceId="u", sequence=0, audio=b64(b"\x01\x02\x03")
    )
    error = await client.until("error")
    assert (error["code"], error["field"]) == ("partial_frame", "audio")
    await client.send_bytes(b"\x00" * 641)
    assert (await client.until("error"))["code"] == "partial_frame"
    await client.send(type="user.audio.chunk", utteranceId="other", sequence=0, audio=b64(b"\0\0"))
    error = await client.until("error")
    assert (error["code"], error["field"]) == ("unknown_utterance", "utteranceId")
    await client.send(type="user.audio.chunk", utteranceId="u", sequence=-1, audio=b64(b"\0\0"))
    assert (await client.until("error"))["field"] == "sequence"
    await client.send(type="user.audio.chunk", utteranceId="u", sequence=2**40, audio=b64(b"\0\0"))
    assert (await client.until("error"))["field"] == "sequence"
    await client.send(
        type="user.audio.chunk", utteranceId="u", sequence=1, audio=b64(b"\0\0"), timestamp="x"
    )
    assert (await client.until("error"))["field"] == "timestamp"
    await still_alive(client)


async def test_a_chunk_without_start_in_manual_mode(agent_connect):
    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    await client.send(
        type="user.audio.chunk", utteranceId="u", sequence=0, audio=b64(b"\0\0" * 320)
    )
    error = await client.until("error")
    assert (error["code"], error["field"]) == ("no_open_utterance", "utteranceId")
    await client.send_bytes(b"\0\0" * 320)
    assert (await client.until("error"))["code"] == "no_open_utterance"
    await still_alive(client)


async def test_frames_over_the_size_limit(agent_connect, settings):
    settings.PARLEY_AGENT_MAX_FRAME_BYTES = 64 * 1024
    client = await agent_connect()
    await client.send_bytes(b"\0\0" * 40000)
    error = await client.until("error")
    assert (error["code"], error["field"]) == ("frame_too_large", "audio")
    await client.send(type="text.input", text="x" * 70000)
    assert (await client.until("error"))["code"] == "frame_too_large"
    await still_alive(client)


async def test_sequences_duplicated_ignored_reordered_in_a_window_else_refused(agent_connect):
    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    pcm = silence(0.3) + speech_pcm("turn on the kitchen lights") + silence(0.3)
    pieces = [pcm[i : i + 640] for i in range(0, len(pcm), 640)]
    order = list(range(len(pieces)))
    # Swap neighbours (within the window) and send a few twice.
    for i in range(0, len(order) - 1, 7):
        order[i], order[i + 1] = order[i + 1], order[i]
    order[10:10] = [3, 4, 5]
    await client.send(type="user.audio.start", utteranceId="q")
    for seq in order:
        await client.send(
            type="user.audio.chunk", utteranceId="q", sequence=seq, audio=b64(pieces[seq])
        )
    # Far ahead of the window: the chunks between are lost, the utterance goes on.
    await client.send(
        type="user.audio.chunk", utteranceId="q", sequence=len(pieces) + 50, audio=b64(b"\0\0")
    )
    error = await client.until("error")
    assert (error["code"], error["field"]) == ("sequence_gap", "sequence")
    assert f"50 chunk(s) from {len(pieces)} to {len(pieces) + 49}" in error["detail"]
    await client.send(type="user.audio.end", utteranceId="q")
    final = await client.until("transcript.final")
    assert "kitchen" in final["text"].lower()
    assert not [f for f in client.frames if f["type"] == "error" and f is not error]
    await client.until("turn.metrics")
    await asyncio.sleep(0.3)

    from agents.models import Exchange

    exchange = await database_sync_to_async(
        lambda: Exchange.objects.select_related("user_stream").get(
            session_id=client.session["id"], index=1
        )
    )()
    # Every byte once, in order: the user's stream holds exactly the audio sent.
    assert exchange.user_stream is not None
    pcm += b"\0\0"  # the chunk after the gap
    assert exchange.user_stream.total_bytes == len(pcm)
    assert exchange.user_stream.speech_text == final["text"]
    chunks = await database_sync_to_async(
        lambda: b"".join(bytes(c.data) for c in exchange.user_stream.chunks.order_by("seq"))
    )()
    assert chunks == pcm


async def test_a_second_session_cannot_take_a_rooms_agent(agent_connect):
    first = await agent_connect("room=shared")
    assert first.session["room"] == "shared"
    second = WebsocketCommunicator(application, "/ws/agent?room=shared")
    assert (await second.connect(timeout=10))[0]
    error = await second.receive_json_from(timeout=10)
    assert (error["type"], error["code"], error["field"]) == ("error", "room_has_agent", "room")
    closed = await second.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4409, "reason": "room has a live agent"}
    await still_alive(first)
    # Once the first leaves, the room's agent seat is free again.
    await first.close()
    third = await agent_connect("room=shared")
    assert third.session["room"] == "shared"


async def test_an_invalid_room_is_refused(agent_connect):
    communicator = WebsocketCommunicator(application, "/ws/agent?room=no%20spaces")
    assert (await communicator.connect(timeout=10))[0]
    error = await communicator.receive_json_from(timeout=5)
    assert (error["code"], error["field"]) == ("invalid_room", "room")
    assert (await communicator.receive_output(timeout=5))["type"] == "websocket.close"


async def test_an_abusive_client_is_closed_with_a_reason(agent_connect):
    client = await agent_connect()
    for _ in range(150):
        await client.send_raw("nope")
    while True:
        output = await client.ws.receive_output(timeout=10)
        if output["type"] == "websocket.close":
            break
    assert output["code"] == 4008 and output["reason"] == "too many invalid frames"


async def test_a_client_that_leaves_mid_reply_stops_synthesis_and_leaves_complete_records(
    agent_connect,
):
    from agents.models import AgentSession, Exchange
    from speech.models import SpeechJob
    from tests.agents.test_agent_ws import LONG

    client = await agent_connect()
    await client.send(type="text.input", text=LONG + " " + LONG[4:] * 3)
    await client.until("agent.audio.chunk")
    await asyncio.sleep(0.3)
    await client.close()
    await asyncio.sleep(0.5)

    def records():
        session = AgentSession.objects.get(pk=client.session["id"])
        exchange = Exchange.objects.get(session=session, index=1)
        jobs = list(SpeechJob.objects.filter(kind="agent").values_list("status", flat=True))
        return session, exchange, jobs

    session, exchange, jobs = await database_sync_to_async(records)()
    assert session.ended_at is not None and session.end_reason == "disconnect"
    assert exchange.interrupted and exchange.interrupted_by == "disconnect"
    assert exchange.ended_at is not None and exchange.heard_ms is not None
    assert "running" not in jobs and "queued" not in jobs
