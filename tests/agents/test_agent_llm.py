"""The agent with an OpenAI-compatible LLM (a real local stand-in server): streamed tokens are
spoken sentence by sentence, and after a barge-in the model is told only what was heard."""

from __future__ import annotations

import asyncio

import pytest

from tests.chat.test_responder_stream import StandIn, StreamScript

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]

SENTENCES = [
    "The northern railway opened in eighteen fifty four. ",
    "It ran from the harbour to the mountains. ",
    "Every station had a clock and a garden. ",
    "Travellers remember the long tunnel most of all.",
]


@pytest.fixture
async def llm_agent(settings):
    server = StandIn()
    await server.start()
    settings.PARLEY_AGENT_RESPONDER = "llm"
    settings.PARLEY_LLM_URL = server.base_url
    settings.PARLEY_LLM_MODEL = "stand-in-1"
    yield server
    await server.stop()


async def test_the_next_answer_knows_only_what_the_user_heard(agent_connect, llm_agent):
    llm_agent.script = StreamScript(deltas=SENTENCES, delay_s=0.05)
    client = await agent_connect()
    assert client.session["responder"] == "openai-compatible/stand-in-1"
    await client.send(type="session.update", instructions="You are a railway guide.")
    await client.until("session.updated")
    await client.send(type="text.input", text="Tell me about the railway.")
    first_audio = await client.until("agent.audio.chunk")
    # The first sentence is spoken before the model has finished the reply.
    assert not [f for f in client.frames if f["type"] == "agent.text.done"]
    assert first_audio["utteranceId"] == "reply-1"
    await asyncio.sleep(1.0)
    await client.send(type="agent.interrupt")
    cut = await client.until("agent.interrupt")
    full = "".join(SENTENCES)
    assert cut["heard_text"] and full.startswith(cut["heard_text"])
    assert len(cut["heard_text"]) < len(full)

    llm_agent.script = StreamScript(deltas=["Sorry. ", "What would you like to know?"])
    await client.send(type="text.input", text="Wait, what?")
    await client.until("agent.audio.end", utteranceId="reply-2")
    messages = llm_agent.seen[-1]["messages"]
    assert messages[0] == {"role": "system", "content": "You are a railway guide."}
    assert messages[1] == {"role": "user", "content": "Tell me about the railway."}
    assert messages[2]["role"] == "assistant"
    assert messages[2]["content"].startswith(cut["heard_text"])
    assert full not in messages[2]["content"]
    assert messages[3]["role"] == "system" and "interrupted" in messages[3]["content"]
    assert messages[-1] == {"role": "user", "content": "Wait, what?"}
    assert llm_agent.seen[-1]["stream"] is True
