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
