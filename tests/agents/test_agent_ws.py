"""WS /ws/agent end to end in-process: real VAD, Whisper, responder, eSpeak, database."""

from __future__ import annotations

import pytest

from tests.agents.conftest import silence, speech_pcm

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


async def test_a_spoken_question_gets_a_spoken_answer_in_manual_mode(agent_connect):
    client = await agent_connect("room=talk1")
    assert client.session["room"] == "talk1"
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    await client.stream(silence(0.3) + speech_pcm("what is two plus two") + silence(0.4))
    final = await client.until("transcript.final")
    assert "two plus two" in final["text"].lower().replace("2", "two").replace("+", "plus")
    done = await client.until("agent.text.done")
    assert done["text"]
    end = await client.until("agent.audio.end")
    assert end["duration_ms"] > 300
    metrics = await client.until("turn.metrics")
    assert metrics["reply_latency_ms"] >= 0
    print(metrics)


LONG = (
    "say The northern railway was opened in eighteen fifty four. It ran from the harbour "
    "to the mountains. Every station had a clock, a garden and a small cafe. Travellers "
    "remember the long tunnel most of all."
)


async def test_server_vad_finds_the_turn_in_a_continuous_microphone_stream(agent_connect):
    client = await agent_connect("room=talk2")
    mic = silence(0.8) + speech_pcm("hello there") + silence(1.2)
    for piece in [mic[i : i + 640] for i in range(0, len(mic), 640)]:
        await client.send_bytes(piece)  # binary frames, no user.audio.start: just a microphone
    started = await client.until("user.speech.started")
    assert 600 <= started["audio_start_ms"] <= 1000
    stopped = await client.until("user.speech.stopped")
    assert stopped["utteranceId"] == started["utteranceId"]
    assert stopped["audio_end_ms"] > started["audio_start_ms"]
    final = await client.until("transcript.final")
    assert "hello" in final["text"].lower()
    await client.until("agent.audio.chunk")
    metrics = await client.until("turn.metrics")
    assert metrics["end_of_turn"] == "vad"
    assert metrics["vad_wait_ms"] is not None


async def test_barge_in_by_voice_stops_the_agent_and_keeps_only_what_was_heard(agent_connect):
    import asyncio

    from channels.db import database_sync_to_async

    from agents.models import Exchange
    from streams.models import Stream, Utterance

    client = await agent_connect("room=talk3")
    await client.send(type="text.input", text=LONG)
    first = await client.until("agent.audio.chunk")
    reply_id = first["utteranceId"]
    await asyncio.sleep(1.2)
    # The user talks over the agent: 0.2 s of held speech is a barge-in.
    await client.stream(speech_pcm("stop please wait") + silence(0.8), uid="over", end=False)
    cut = await client.until("agent.interrupt")
    assert cut["utteranceId"] == reply_id
    assert 800 <= cut["heard_ms"] <= 3000
    full = LONG[4:]
    assert cut["heard_text"] and full.startswith(cut["heard_text"].rstrip("."))
    assert len(cut["heard_text"]) < len(full)
    after = client.frames[client.frames.index(cut) :]
    assert not [
        f for f in after if f["type"] == "agent.audio.chunk" and f["utteranceId"] == reply_id
    ]
    # The user's barge-in is the next turn.
    await client.send(type="user.audio.end", utteranceId="over")
    final = await client.until("transcript.final", utteranceId="over")
    assert "stop" in final["text"].lower()
    await client.until("turn.metrics", utteranceId="over")

    def records():
        exchange = Exchange.objects.get(session_id=client.session["id"], index=1)
        stream = Stream.objects.get(stream_id=f"agent-{client.session['id'].replace('-', '')}-1")
        return exchange, stream, Utterance.objects.get(stream=stream)

    exchange, stream, utterance = await database_sync_to_async(records)()
    assert exchange.interrupted and exchange.interrupted_by == "vad"
    assert exchange.heard_text == cut["heard_text"] and exchange.reply_text == full
    assert exchange.heard_ms == cut["heard_ms"]
    assert stream.status == "interrupted"
    assert utterance.text == cut["heard_text"]
    # The core's playhead and the agent's agree to within a chunk or so.
    assert abs(stream.heard_ms - cut["heard_ms"]) <= 250


async def test_agent_interrupt_from_the_client_and_text_input(agent_connect):
    import asyncio

    client = await agent_connect()
    assert client.session["room"].startswith("agent-")
    await client.send(type="text.input", text=LONG)
    await client.until("agent.audio.chunk")
    await asyncio.sleep(0.5)
    await client.send(type="agent.interrupt")
    cut = await client.until("agent.interrupt")
    assert cut["heard_ms"] >= 300
    metrics = await client.until("turn.metrics")
    assert metrics["interrupted"] is True and metrics["interrupted_by"] == "client"
    await client.send(type="text.input", text="what is 2 plus 2")
    done = await client.until("agent.text.done", utteranceId="reply-2")
    assert "4" in done["text"]
    await client.until("agent.audio.end", utteranceId="reply-2")


async def test_output_format_and_voice_apply_from_the_next_reply(agent_connect):
    from tests.agents.conftest import audio_of

    client = await agent_connect()
    await client.send(type="session.update", output_format={"sample_rate_hz": 24000}, voice="nova")
    updated = await client.until("session.updated")
    assert updated["session"]["output_format"]["sample_rate_hz"] == 24000
    assert updated["session"]["voice"] == "nova" and updated["session"]["tts"]["engine"]
    await client.send(type="text.input", text=LONG)
    await client.until("agent.audio.chunk")
    # Changed mid-reply: this reply keeps its format; the next one takes the new one.
    await client.send(type="session.update", output_format={"sample_rate_hz": 8000})
    await client.until("session.updated")
    end = await client.until("agent.audio.end", timeout=60)
    first = [f for f in client.frames if f.get("utteranceId") == "reply-1"]
    assert abs(len(audio_of(first)) / 48 - end["duration_ms"]) <= 1
    await client.send(type="text.input", text="say hi")
    end = await client.until("agent.audio.end", utteranceId="reply-2")
    second = [f for f in client.frames if f.get("utteranceId") == "reply-2"]
    assert abs(len(audio_of(second)) / 16 - end["duration_ms"]) <= 1
