"""WS /v1/audio/speech/ws through the real ASGI application (channels' communicator), real
eSpeak NG and Piper, on whichever database the suite runs (SQLite, or PostgreSQL with
DATABASE_URL)."""

from __future__ import annotations

import asyncio
import time

import pytest
from channels.db import database_sync_to_async

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

FIRST = "The first sentence is ready."
TOKENS = [
    "The",
    " first",
    " sentence",
    " is",
    " ready.",
    " The",
    " second",
    " one",
    " takes",
    " its",
    " time",
    " to",
    " arrive",
    " token",
    " by",
    " token.",
]


async def _jobs(**filters):
    from speech.models import SpeechJob

    return await database_sync_to_async(
        lambda: list(SpeechJob.objects.filter(**filters).order_by("created_at"))
    )()


async def _wait_jobs(count: int, timeout: float = 20.0, **filters):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        jobs = await _jobs(**filters)
        done = [j for j in jobs if j.status not in ("queued", "running")]
        if len(done) >= count or loop.time() > deadline:
            return jobs
        await asyncio.sleep(0.2)


async def test_the_first_sentence_is_heard_before_the_last_token_is_sent(speech_ws):
    """A slow token stream (0.25 s a token, like a language model): the first sentence's
    audio arrives while the second sentence is still being written."""
    client = await speech_ws("voice=alloy")
    assert client.session["sample_rate"] == 24000 and client.session["engine"] == "espeak"
    audio_seen_at_token: int | None = None
    for index, token in enumerate(TOKENS):
        await client.append(token)
        # Read whatever has arrived meanwhile, without blocking the token stream.
        deadline = time.monotonic() + 0.25
        while time.monotonic() < deadline:
            if await client.quiet(0.02):
                continue
            message = await client.recv()
            if message["type"] == "audio" and audio_seen_at_token is None:
                audio_seen_at_token = index
                assert message["sentence"] == 1
                assert (message["text_start"], message["text_end"]) == (0, len(FIRST))
    assert audio_seen_at_token is not None, "no audio before the last token was sent"
    assert audio_seen_at_token < len(TOKENS) - 1
    await client.send(type="end")
    done = await client.until("session.done")
    assert (await client.until("<close>"))["code"] == 1000
    sentences = client.of("sentence.done")
    assert [s["text"] for s in sentences] == [FIRST, "".join(TOKENS)[len(FIRST) + 1 :]]
    assert all(s["status"] == "completed" for s in sentences)
    audio = client.audio()
    assert len(audio) == done["usage"]["audio_bytes"] > 24000  # more than half a second
    assert done["usage"]["characters"] == len("".join(TOKENS))
    assert done["usage"]["sentences"] == 2
    jobs = await _wait_jobs(2, kind="ws")
    assert [j.text for j in jobs] == [s["text"] for s in sentences]
    assert {str(j.id) for j in jobs} == {s["job_id"] for s in sentences}
    assert all(j.status == "completed" and j.endpoint == "/v1/audio/speech/ws" for j in jobs)
    assert sum(j.bytes_sent for j in jobs) == len(audio)


async def test_frames_and_alignment_cover_the_text_in_order(speech_ws):
    client = await speech_ws()
    text = (
        "Good morning. Dr. Smith will see you at 3.30 today!\n"
        "- bring your card\n- and a pen\nThat is all, thanks."
    )
    for i in range(0, len(text), 7):
        await client.append(text[i : i + 7])
    await client.send(type="end")
    await client.until("<close>")
    sentences = client.of("sentence.done")
    assert [s["text"] for s in sentences] == [
        "Good morning.",
        "Dr. Smith will see you at 3.30 today!",
        "- bring your card",
        "- and a pen",
        "That is all, thanks.",
    ]
    previous_end, previous_ms = 0, 0.0
    for sentence in sentences:
        assert text[sentence["text_start"] : sentence["text_end"]] == sentence["text"]
        assert sentence["text_start"] >= previous_end
        previous_end = sentence["text_end"]
        # eSpeak NG marks every word, except one after a lone dash (interpolated then).
        expected = "mixed" if sentence["text"].startswith("-") else "engine"
        assert sentence["alignment"]["source"] == expected
        words = sentence["alignment"]["words"]
        assert [w["text"] for w in words] == sentence["text"].split()
        for word in words:
            assert text[word["start"] : word["end"]] == word["text"]
            assert previous_ms <= word["start_ms"] <= word["end_ms"]
            previous_ms = word["start_ms"]
        start = sentence["audio_start_ms"]
        assert words[0]["start_ms"] >= start
        assert words[-1]["end_ms"] == pytest.approx(start + sentence["audio_ms"], abs=0.2)
    # Each audio frame: its sentence's span, contiguous times, the words starting in it.
    frames = client.of("audio")
    assert [f["seq"] for f in frames] == list(range(len(frames)))
    at = 0  # bytes: 48 a millisecond at 24 kHz
    for frame in frames:
        assert frame["audio_start_ms"] == pytest.approx(at / 48, abs=0.1)
        assert frame["duration_ms"] == pytest.approx(frame["bytes"] / 48, abs=0.1)
        at += frame["bytes"]
        assert frame["duration_ms"] <= 200.1
        for word in frame["words"]:
            assert frame["audio_start_ms"] - 0.2 <= word["start_ms"]
            assert word["start_ms"] <= frame["audio_start_ms"] + frame["duration_ms"] + 0.2
    framed = [w["start"] for f in frames for w in f["words"]]
    assert framed == sorted(set(framed))  # each word once, in order
    aligned = {w["start"]: w["start_ms"] for s in sentences for w in s["alignment"]["words"]}
    for frame in frames:
        for word in frame["words"]:
            assert word["start_ms"] == aligned[word["start"]]
    for sentence in sentences:
        if sentence["alignment"]["source"] == "engine":
            assert {w["start"] for w in sentence["alignment"]["words"]} <= set(framed)


async def test_flush_speaks_an_unfinished_sentence_and_is_acknowledged_after_it(speech_ws):
    client = await speech_ws("response_format=pcm&sample_rate=16000")
    assert client.session["sample_rate"] == 16000
    await client.append("An answer without a full stop")
    assert await client.quiet(1.0)  # not complete: nothing spoken yet
    await client.send(type="input_text.flush")
    flushed = await client.until("input_text.flushed")
    assert flushed["flush_id"] == 1
    kinds = [m["type"] for m in client.messages]
    assert kinds.index("audio") < kinds.index("sentence.done") < kinds.index("input_text.flushed")
    assert client.of("sentence.done")[0]["text"] == "An answer without a full stop"
    # flush on the append itself, and a flush with nothing buffered
    await client.append("Second turn", flush=True)
    assert (await client.until("input_text.flushed"))["flush_id"] == 2
    assert client.of("sentence.done")[-1]["text"] == "Second turn"
    await client.send(type="input_text.flush")
    assert (await client.until("input_text.flushed"))["flush_id"] == 3
    assert len(client.of("sentence.done")) == 2


async def test_cancel_mid_sentence_stops_the_audio_and_the_session_goes_on(speech_ws, settings):
    settings.PARLEY_TTS_WS_LEAD_MS = 300  # paced: the long sentence is still being sent
    client = await speech_ws()
    long = "This sentence is long enough to take several seconds to say, " * 3 + "really."
    await client.append(long + " And more text that is never finished")
    first = await client.until("audio")
    assert first["sentence"] == 1
    await client.send(type="cancel")
    cancelled = await client.until("cancelled")
    assert cancelled["sentences"] == [1]
    assert (cancelled["text_start"], cancelled["text_end"]) == (0, len(long) + 37)
    sent_ms = cancelled["audio_ms"]
    assert 0 < sent_ms < 8000  # far from the whole sentence (about 11 s)
    assert await client.quiet(1.5)  # not one more frame of it
    assert not client.of("sentence.done")
    # The job stopped, recorded as cancelled.
    jobs = await _wait_jobs(1, kind="ws")
    assert jobs[0].status == "cancelled"
    # The session goes on; offsets continue after the dropped text.
    await client.append(" New text.", flush=True)
    done = await client.until("sentence.done")
    assert done["text"] == "New text." and done["text_start"] == len(long) + 38
    assert done["audio_start_ms"] == pytest.approx(sent_ms, abs=0.2)
    await client.until("input_text.flushed")


async def test_cancel_with_nothing_in_flight_and_flushes_it_answers(speech_ws):
    client = await speech_ws()
    await client.append("Pending words")
    await client.send(type="cancel")
    cancelled = await client.until("cancelled")
    assert cancelled == {
        "type": "cancelled",
        "text_start": 0,
        "text_end": 13,
        "sentences": [],
        "audio_ms": 0.0,
    }
    await client.send(type="input_text.flush")
    await client.until("input_text.flushed")
    assert not client.of("audio")


async def test_session_update_changes_the_voice_between_sentences(speech_ws):
    client = await speech_ws("voice=en-us")
    await client.append("One voice. ")
    await client.send(type="session.update", voice="en-gb", speed=1.5)
    updated = await client.until("session.updated")
    assert updated["session"]["voice"] == "en-gb" and updated["session"]["speed"] == 1.5
    await client.append("Another voice.", flush=True)
    await client.until("input_text.flushed")
    ids = [s["job_id"] for s in client.of("sentence.done")]
    jobs = {str(j.id): j for j in await _wait_jobs(2, kind="ws")}
    assert [jobs[i].engine_voice for i in ids] == ["en-us", "en-gb"]
    assert [jobs[i].speed for i in ids] == [1.0, 1.5]
    # The format is fixed once text was sent.
    await client.send(type="session.update", sample_rate=16000)
    error = await client.until("error")
    assert error["code"] == "format_locked" and error["field"] == "sample_rate"


async def test_wav_and_base64_transport(speech_ws):
    import io
    import wave

    client = await speech_ws("response_format=wav&audio_transport=base64")
    assert client.session["sample_rate"] == 22050  # wav: the engine's own rate
    await client.append("A wave file.", flush=True)
    await client.until("input_text.flushed")
    header = client.of("audio.header")
    assert len(header) == 1 and header[0]["bytes"] == 44
    assert not [m for m in client.messages if m["type"] == "<bytes>"]
    import base64

    data = base64.b64decode(header[0]["audio"]) + client.audio()
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getframerate() == 22050 and wav.getnchannels() == 1
        assert wav.readframes(10**7) == client.audio()


async def test_piper_alignment_is_anchored_on_sentences_and_interpolated(speech_ws):
    client = await speech_ws("model=piper")
    assert client.session["engine"] == "piper"
    await client.append("Piper speaks here. It gives sentence marks only.", flush=True)
    await client.until("input_text.flushed", timeout=120)
    for sentence in client.of("sentence.done"):
        words = sentence["alignment"]["words"]
        assert sentence["alignment"]["source"] in ("mixed", "proportional")
        assert [w["text"] for w in words] == sentence["text"].split()
        assert [w["start_ms"] for w in words] == sorted(w["start_ms"] for w in words)
        assert words[-1]["end_ms"] == pytest.approx(
            sentence["audio_start_ms"] + sentence["audio_ms"], abs=0.2
        )
    assert all(not f["words"] for f in client.of("audio"))  # no word marks from Piper


async def test_pacing_keeps_audio_within_the_lead_of_real_time(speech_ws, settings):
    settings.PARLEY_TTS_WS_LEAD_MS = 500
    client = await speech_ws()
    started = time.monotonic()
    await client.append("Counting slowly: one, two, three, four, five, six, seven.", flush=True)
    await client.until("input_text.flushed")
    elapsed = time.monotonic() - started
    audio_s = sum(f["duration_ms"] for f in client.of("audio")) / 1000
    assert audio_s > 2.5
    # Sent no faster than real time, less the lead (a generous margin for a loaded machine).
    assert elapsed >= audio_s - 0.5 - 0.3


async def test_end_with_nothing_said_reports_zero_usage(speech_ws):
    client = await speech_ws()
    await client.append("...   ")
    await client.send(type="end")
    done = await client.until("session.done")
    assert done["usage"]["sentences"] == 0 and done["usage"]["audio_bytes"] == 0
    silent = client.of("sentence.done")
    assert [s["status"] for s in silent] == ["silent"]
    assert (await client.until("<close>"))["code"] == 1000


def _session_tasks() -> list[asyncio.Task]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("speechws")]


async def test_no_task_outlives_its_session(speech_ws):
    """A session that ends itself (session.done, close 1000), and one whose client leaves in
    the middle of a sentence: every task of theirs is gone, the cut job is cancelled."""
    from tests.speechws.conftest import settle

    client = await speech_ws()
    await client.append("Short one. And another", flush=True)
    await client.send(type="end")
    await client.until("<close>")
    await client.close()
    leaving = await speech_ws()
    await leaving.append("A sentence long enough to be cut while it plays, " * 6, flush=True)
    await leaving.until("audio")
    await leaving.close()
    await settle()
    await asyncio.sleep(0.2)
    assert _session_tasks() == []
    jobs = await _wait_jobs(3, kind="ws")
    assert sorted(j.status for j in jobs) == ["cancelled", "completed", "completed"]
