"""speech.services.synthesis_stream, the API the chat and room surfaces build on."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator

import httpx
import pytest
from channels.db import database_sync_to_async

from config.asgi import application
from speech import services
from speech.models import SpeechJob
from speech.params import KNOB_FIELDS
from speech.tts import EngineCapabilities, SynthChunk, SynthesisError, TTSEngine, VoiceInfo
from streams.errors import ApiError
from streams.runtime import runtime

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_recorders")]

TEXT = "One sentence here. Another sentence there. A third one to finish."


async def collect(**kwargs) -> tuple[bytes, services.LiveJob]:
    pcm = bytearray()
    job = None
    async for chunk in services.synthesis_stream(**{"model": None, "voice": None, **kwargs}):
        assert chunk.pcm
        pcm += chunk.pcm
        job = chunk.job
    assert job is not None
    await job.recorded.wait()
    return bytes(pcm), job


async def record(job_id) -> SpeechJob:
    return await database_sync_to_async(SpeechJob.objects.get)(pk=job_id)


async def test_streams_pcm_and_records_the_job():
    runtime.ensure_started(sweeper=False)
    pcm, job = await collect(text=TEXT, voice="alloy", job_kind="chat")
    row = await record(job.id)
    assert row.status == "completed" and row.kind == "chat"
    assert row.engine == "espeak" and row.engine_voice == "en-us" and row.voice == "alloy"
    assert row.sample_rate == 22050 and row.audio_bytes == len(pcm)
    assert row.total_chunks == row.current_chunk == 1  # 65 characters: one piece
    assert row.first_audio_ms is not None and row.ttfb_ms >= row.first_audio_ms
    assert row.real_time_factor < 1 and row.elapsed_seconds > 0
    assert row.usage == services.usage_for(TEXT, len(pcm), 22050)
    assert row.params["streaming_strategy"] == "sentence" and row.params["given"] == []


async def test_strategy_and_chunk_size_decide_the_pieces():
    runtime.ensure_started(sweeper=False)
    _, job = await collect(
        text=TEXT, params={"streaming_strategy": "word", "streaming_chunk_size": 50}
    )
    assert job.total_chunks == 2
    pieces = set()
    fixed = {"streaming_strategy": "fixed", "streaming_chunk_size": 50}
    async for chunk in services.synthesis_stream(text=TEXT, model=None, voice=None, params=fixed):
        pieces.add(chunk.piece)
    assert pieces == {0, 1}


async def test_sample_rate_resamples_without_changing_duration():
    runtime.ensure_started(sweeper=False)
    native, _ = await collect(text=TEXT)
    resampled, job = await collect(text=TEXT, sample_rate=16000)
    assert job.sample_rate == 16000 and job.engine_sample_rate == 22050
    assert abs(len(resampled) / 32000 - len(native) / 44100) < 0.05


async def test_bad_arguments_raise_api_errors_before_any_audio():
    runtime.ensure_started(sweeper=False)
    cases = [
        ({"text": ""}, "input"),
        ({"text": "x", "model": "nope"}, "model"),
        ({"text": "x", "voice": "no-such-voice"}, "voice"),  # espeak speaks Klingon (piqd)
        ({"text": "x", "speed": 0}, "speed"),
        ({"text": "x", "sample_rate": 100}, "sample_rate"),
        ({"text": "x", "params": {"temperature": 99}}, "temperature"),
        ({"text": "x", "params": {"colour": "red"}}, "colour"),
        ({"text": "a\ud800b"}, "input"),
    ]
    for kwargs, field in cases:
        with pytest.raises(ApiError) as caught:
            await anext(services.synthesis_stream(**{"model": None, "voice": None, **kwargs}))
        assert caught.value.field == field, kwargs


async def test_stopping_early_cancels_the_job():
    runtime.ensure_started(sweeper=False)
    chunks = services.synthesis_stream(text="word " * 3000, model="tts-1", voice=None)
    first = await anext(chunks)
    await chunks.aclose()
    await first.job.recorded.wait()
    row = await record(first.job.id)
    assert row.status == "cancelled" and row.error == "cancelled"
    assert row.current_chunk < row.total_chunks


# --- a scripted engine: sees exactly what synthesis asks of it ------------------------------


class ScriptedEngine(TTSEngine):
    name = "scripted"
    sample_rate = 8000
    capabilities = EngineCapabilities(params=frozenset({"speed"}), speed_range=(0.25, 4.0))

    def __init__(self, fail_on: str | None = None) -> None:
        self.started: list[str] = []
        self.fail_on = fail_on
        self.cancelled = threading.Event()

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo("only", "only")]

    def synthesize(
        self, text, *, voice=None, speed=1.0, params=None, cancel=None, **_
    ) -> Iterator[SynthChunk]:
        self.started.append(text)
        for n in range(3):
            if cancel is not None and cancel.is_set():
                self.cancelled.set()
                return
            if self.fail_on is not None and self.fail_on in text and n == 1:
                raise SynthesisError("the scripted engine broke")
            yield SynthChunk(b"\x00\x01" * 80)


@pytest.fixture
def scripted(monkeypatch) -> ScriptedEngine:
    engine = ScriptedEngine(fail_on="BREAK")

    async def engine_for(registry, name):
        return engine

    monkeypatch.setattr(services, "engine_for", engine_for)
    return engine


async def test_buffer_size_bounds_how_far_synthesis_runs_ahead(scripted):
    runtime.ensure_started(sweeper=False)
    text = " ".join(f"Sentence number {n} is here." for n in range(8))
    chunks = services.synthesis_stream(
        text=text,
        model=None,
        voice=None,
        params={"streaming_chunk_size": 50, "streaming_buffer_size": 2},
    )
    first = await anext(chunks)  # piece 0 held back, sent with piece 1's first audio
    await asyncio.sleep(0.2)  # a slow client: the producer may only run 2 pieces ahead
    assert first.piece == 1 and first.job.total_chunks == 8
    assert len(scripted.started) == 4
    pieces = [chunk.piece async for chunk in chunks]
    assert len(scripted.started) == 8 and pieces[-1] == 7


async def test_a_failure_mid_stream_fails_the_job_and_raises(scripted):
    runtime.ensure_started(sweeper=False)
    chunks = services.synthesis_stream(
        text="Fine. BREAK here.",
        model=None,
        voice=None,
        params={"streaming_chunk_size": 50, "streaming_strategy": "word"},
    )
    first = await anext(chunks)
    with pytest.raises(services.SynthesisFailed):
        async for _ in chunks:
            pass
    await first.job.recorded.wait()
    row = await record(first.job.id)
    assert row.status == "failed" and row.error == "synthesis_failed"
    assert "scripted engine broke" in row.error_detail


async def test_sse_reports_a_mid_stream_failure_as_an_event(scripted):
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://t"
    ) as client:
        response = await client.post(
            "/v1/audio/speech",
            json={
                "input": "Fine. BREAK here.",
                "stream_format": "sse",
                # The engine's own rate: SSE PCM is otherwise resampled to 24 kHz, and the
                # resampler's delay swallows this engine's 10 ms chunks before the failure.
                "sample_rate": 8000,
                "streaming_strategy": "word",
                "streaming_chunk_size": 50,
            },
        )
    assert response.status_code == 200
    events = [
        json.loads(block.split("data: ", 1)[1]) for block in response.text.strip().split("\n\n")
    ]
    kinds = [event["type"] for event in events]
    assert kinds[0] == "speech.audio.info" and kinds[-1] == "speech.audio.error"
    assert "speech.audio.done" not in kinds
    assert events[-1]["error"] == "synthesis_failed"
    assert base64.b64decode(events[1]["audio"])
    job_id = events[0]["job_id"]
    for _ in range(100):  # the job row is written after the response, by its recorder
        row = await database_sync_to_async(SpeechJob.objects.filter(pk=job_id).first)()
        if row is not None and row.status != "running":
            break
        await asyncio.sleep(0.02)
    assert row.status == "failed" and row.error == "synthesis_failed"


def test_engine_params_follow_the_documented_mapping():
    defaults = {spec.name: spec.default for spec in KNOB_FIELDS}
    assert services.engine_params("espeak", defaults, set()) == {"pitch_range": 50}
    assert services.engine_params("espeak", {**defaults, "exaggeration": 2.0}, set()) == {
        "pitch_range": 100
    }
    assert services.engine_params("espeak", {**defaults, "exaggeration": 0.25}, set()) == {
        "pitch_range": 25
    }
    assert services.engine_params("piper", defaults, set()) == {}
    assert services.engine_params("piper", {**defaults, "temperature": 1.6}, {"temperature"}) == {
        "noise_scale": 1.334
    }
    for exaggeration, noise_w in ((0.25, 0.4), (0.5, 0.8), (1.25, 0.95), (2.0, 1.1)):
        given = {**defaults, "exaggeration": exaggeration}
        assert services.engine_params("piper", given, {"exaggeration"}) == {
            "noise_w_scale": noise_w
        }
    assert services.engine_params("openai", {**defaults, "cfg_weight": 0.2}, {"cfg_weight"}) == {
        "cfg_weight": 0.2
    }


async def _piper_seconds(text: str, params: dict) -> float:
    pcm = [
        chunk
        async for chunk in services.synthesis_stream(
            text=text, model="piper", voice=None, params=params
        )
    ]
    return sum(len(chunk.pcm) for chunk in pcm) / (2 * pcm[0].job.sample_rate)


@pytest.mark.timeout(120)
async def test_piper_exaggeration_keeps_the_duration_plausible():
    # Piper's duration noise is random: a few runs each, every one within bounds.
    runtime.ensure_started(sweeper=False)
    text = "Hello there, how are you today?"
    default = await _piper_seconds(text, {})
    for exaggeration in (0.25, 2.0):
        for _ in range(3):
            seconds = await _piper_seconds(text, {"exaggeration": exaggeration})
            assert 0.6 * default <= seconds <= 1.6 * default, (exaggeration, seconds, default)


SIX_SENTENCES = " ".join(f"This is sentence number {n}, said slowly." for n in range(6))


async def _first_and_rest(params: dict) -> tuple[services.SpeechChunk, list]:
    chunks = services.synthesis_stream(
        text=SIX_SENTENCES,
        model=None,
        voice=None,
        params={"streaming_chunk_size": 50, **params},  # one sentence a piece
    )
    first = await anext(chunks)
    return first, [chunk async for chunk in chunks]


async def test_a_sent_buffer_size_holds_back_whole_pieces_before_the_first_byte():
    runtime.ensure_started(sweeper=False)
    # Not sent: the first audio leaves at once (OpenAI clients expect no start-up wait).
    first, rest = await _first_and_rest({})
    assert first.piece == 0
    unbuffered = [first, *rest]
    head = sum(len(c.pcm) for c in unbuffered if c.piece < 3)  # audio of pieces 0-2
    one, _ = await _first_and_rest({"streaming_buffer_size": 1})
    assert one.piece == 0 and len(one.pcm) < 0.6 * head
    # 4: pieces 0-2 whole, then the first audio of piece 3, in one chunk
    four, rest = await _first_and_rest({"streaming_buffer_size": 4})
    assert four.piece == 3
    assert len(four.pcm) > 0.9 * head  # espeak's output varies a little run to run
    assert {mark.text_offset for mark in four.marks if mark.kind == "sentence"} >= {
        SIX_SENTENCES.index(f"This is sentence number {n}") for n in range(3)
    }
    assert [c.piece for c in rest] == sorted(c.piece for c in rest)
    # a buffer longer than the text: everything leaves together at the end
    ten, rest = await _first_and_rest({"streaming_buffer_size": 10})
    assert ten.piece == 5 and rest == []
