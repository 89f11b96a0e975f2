"""The admin shows an agent session's transcript in order, players, the cut and latencies."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth import get_user_model

from agents import services
from agents.models import AgentSession
from tests.conftest import pcm

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_session_with_a_cut_reply_in_the_admin(client):
    get_user_model().objects.create_superuser("boss", "", "pw-boss-123")
    assert client.login(username="boss", password="pw-boss-123")
    sid = str(uuid.uuid4())
    services.agent_session_start(
        session_id=sid,
        room_name="adm",
        fields={"user_speaker": "user:x", "agent_speaker": "agent:x", "stt_engine": "whisper"},
    )
    for seq, done in ((0, False), (1, True)):
        services.speech_chunk(
            room_name="adm",
            speaker="user:x",
            stream_id="user-x-1",
            seq=seq,
            data=pcm(0.2, sample_rate=16000),
            sample_rate_hz=16000,
            done=done,
            text="tell me a story" if done else "",
        )
    pk = services.exchange_create(
        session_id=sid,
        index=1,
        fields={"source": "audio", "user_utterance_id": "u1", "user_stream": "user-x-1"},
    )
    services.exchange_update(
        exchange_id=pk,
        fields={
            "transcript": "tell me a story",
            "reply_text": "Once upon a time there was a fox.",
            "heard_text": "Once upon a time",
            "heard_ms": 900,
            "interrupted": True,
            "interrupted_by": "vad",
            "metrics": {"reply_latency_ms": 312, "stt_ms": 4, "stt_speculative": True},
        },
    )
    session = AgentSession.objects.get()
    page = client.get(f"/admin/agents/agentsession/{session.pk}/change/").content.decode()
    assert "tell me a story" in page
    assert "Once upon a time" in page and "cut at 900 ms by vad" in page
    assert "<s> there was a fox.</s>" in page
    assert '<audio controls preload="none" src="/api/streams/user-x-1/audio.wav">' in page
    assert "312 ms" in page and "speculative transcript used" in page
    listing = client.get("/admin/agents/exchange/").content.decode()
    assert "tell me a story" in listing and "900 ms" in listing
    assert client.get("/admin/agents/agentsession/").status_code == 200
