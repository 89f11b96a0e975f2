"""The voice agent in the deployment shape: a spectator on another worker hears both sides,
and the agent's remote STT is another Parley's /v1/audio/transcriptions."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pytest
import websockets

from tests.agents.conftest import chunks, silence, speech_pcm

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def frames_until(ws, kind: str, seen: list[dict], timeout: float = 30.0, **match) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        seen.append(frame)
        if frame["type"] == kind and all(frame.get(k) == v for k, v in match.items()):
            return frame


async def test_a_spectator_on_another_worker_hears_the_user_and_the_agent(deployment):
    b = deployment.start_worker()
    # Worker a transcribes through worker b: Parley is both ends of the OpenAI audio API.
    a = deployment.start_worker(PARLEY_STT_ENGINE="openai", PARLEY_STT_URL=f"{b.url}/v1")
    room = "it-agent"
    spectated: list[dict] = []
    talked: list[dict] = []
    async with (
        websockets.connect(f"ws://127.0.0.1:{b.port}/spectate/ws?room={room}") as spectator,
        websockets.connect(f"ws://127.0.0.1:{a.port}/ws/agent?room={room}") as agent,
    ):
        created = await frames_until(agent, "session.created", talked)
        session = created["session"]
        assert session["stt"]["name"] == "openai"
        await agent.send(json.dumps({"type": "session.update", "turn_detection": "manual"}))
        await frames_until(agent, "session.updated", talked)
        pcm = silence(0.3) + speech_pcm("turn on the kitchen lights") + silence(0.4)
        await agent.send(json.dumps({"type": "user.audio.start", "utteranceId": "q1"}))
        for seq, piece in enumerate(chunks(pcm)):
            await agent.send(
                json.dumps(
                    {
                        "type": "user.audio.chunk",
                        "utteranceId": "q1",
                        "sequence": seq,
                        "timestamp": seq * 20,
                        "audio": base64.b64encode(piece).decode(),
                    }
                )
            )
        await agent.send(json.dumps({"type": "user.audio.end", "utteranceId": "q1"}))
        final = await frames_until(agent, "transcript.final", talked)
        assert "kitchen" in final["text"].lower()
        done = await frames_until(agent, "agent.text.done", talked)
        end = await frames_until(agent, "agent.audio.end", talked)
        # The spectator on the other worker: the user's speech, then the agent's.
        await frames_until(spectator, "speech", spectated, speaker=session["user_speaker"])
        agent_speech = await frames_until(
            spectator, "speech", spectated, speaker=session["agent_speaker"]
        )
    assert agent_speech["text"] == done["text"]
    heard = {
        speaker: b"".join(
            base64.b64decode(e["data"])
            for e in spectated
            if e["type"] == "audio_chunk" and e["speaker"] == speaker
        )
        for speaker in (session["user_speaker"], session["agent_speaker"])
    }
    assert heard[session["user_speaker"]] == pcm
    sent = b"".join(
        base64.b64decode(f["audio"]) for f in talked if f["type"] == "agent.audio.chunk"
    )
    assert heard[session["agent_speaker"]] == sent
    assert abs(len(sent) / 32 - end["duration_ms"]) <= 1
    ids = [e["id"] for e in spectated]
    assert ids == sorted(set(ids))
