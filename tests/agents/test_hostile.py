"""Hostile and demanding clients of WS /ws/agent and POST /v1/audio/transcriptions.

Each test names a defect found by attacking the voice agent; it fails while the defect is there
and passes once it is fixed. See docs/agent.md for the contract they hold the code to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
from channels.db import database_sync_to_async

from tests.agents.conftest import silence, speech_pcm

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


def _hex(client) -> str:
    return client.session["id"].replace("-", "")


async def _records(client):
    from agents.models import AgentSession, Exchange
    from streams.models import Stream

    def read():
        session = AgentSession.objects.get(pk=client.session["id"])
        exchanges = list(Exchange.objects.filter(session=session).order_by("index"))
        streams = {s.stream_id: s for s in Stream.objects.filter(stream_id__contains=_hex(client))}
        return session, exchanges, streams

    return await database_sync_to_async(read)()


async def _wait_for(predicate, timeout: float = 15.0):
    """Poll an async predicate until it is truthy (records are written off the loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value or loop.time() > deadline:
            return value
        await asyncio.sleep(0.2)


async def _leave(client) -> None:
    """Disconnect once; the fixture's own close at teardown then does nothing (a cancelled
    application would make it raise CancelledError)."""
    with contextlib.suppress(BaseException):
        await client.ws.disconnect()

    async def closed() -> None:
        return None

    client.close = closed


async def _drain(client, quiet: float = 4.0, limit: float = 40.0) -> None:
    """Receive until the server has been quiet for `quiet` seconds (without timing out a
    receive, which would cancel the application)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while loop.time() < deadline:
        if await client.ws.receive_nothing(timeout=quiet, interval=0.05):
            return
        output = await client.ws.receive_output()
        if output["type"] == "websocket.close":
            client.frames.append({"type": "CLOSED", "code": output.get("code")})
            return
        client.frames.append(json.loads(output["text"]))


async def _mic(client, pcm: bytes) -> None:
    """A microphone streamed as binary frames, as fast as the socket takes them."""
    for i in range(0, len(pcm), 640):
        await client.send_bytes(pcm[i : i + 640])


# --- a user turn whose exchange is cancelled before it ran --------------------------------


async def test_a_second_turn_right_after_the_first_keeps_the_first_ones_words(agent_connect):
    """Server VAD: the user pauses (turn 1 ends), then speaks again before turn 1 was
    transcribed. Today turn 1's exchange task is cancelled before it ever ran: no
    transcript.final, the words are not carried into the next turn (carry_text is only set
    once a reply exists), and turn 1's user stream is never finished."""
    client = await agent_connect()
    mic = (
        silence(0.5)
        + speech_pcm("what is the weather like in paris today")
        + silence(0.9)
        + speech_pcm("turn on the kitchen lights please")
        + silence(1.5)
    )
    await _mic(client, mic)
    await client.until("agent.audio.end", timeout=40)
    # Either turn 1 was transcribed on its own, or its words were carried into turn 2 (the
    # built-in responder echoes what it was told).
    said = client.of("transcript.final") + client.of("agent.text.done")
    heard = " ".join(f["text"] for f in said).lower()
    assert "paris" in heard or "weather" in heard, said


async def test_a_cancelled_turn_does_not_jam_the_rooms_records(agent_connect):
    """Same two quick turns: turn 1's user stream stays `streaming` and holds the floor, so
    every later write of the session (turn 2's audio, the reply's audio for spectators, the
    exchange rows, the session's end) waits 30 s each for the floor and is then dropped."""
    client = await agent_connect()
    mic = (
        silence(0.5)
        + speech_pcm("what is the weather like in paris today")
        + silence(0.9)
        + speech_pcm("turn on the kitchen lights please")
        + silence(1.5)
    )
    await _mic(client, mic)
    end = await client.until("agent.audio.end", timeout=40)
    reply_index = int(end["utteranceId"].split("-")[1])
    agent_stream = f"agent-{_hex(client)}-{reply_index}"

    async def reached_core():
        _, exchanges, streams = await _records(client)
        return agent_stream in streams and len(exchanges) >= reply_index

    assert await _wait_for(reached_core, timeout=10), "the reply never reached the room"
    _, _, streams = await _records(client)
    first = streams[f"user-{_hex(client)}-1"]
    assert first.status != "streaming", "turn 1's user stream was never finished"
    await _leave(client)

    async def ended():
        session, _, _ = await _records(client)
        return session.ended_at is not None

    assert await _wait_for(ended, timeout=15), "the session was never ended"


async def test_a_turn_over_the_max_length_keeps_its_transcript(agent_connect, settings):
    """Server VAD, a user talking past PARLEY_AGENT_MAX_UTTERANCE_S: the turn ends
    (`max_length`), but the very next speech frame barges in on its own pending exchange and
    cancels it, so the first part of what was said is never transcribed or answered."""
    settings.PARLEY_AGENT_MAX_UTTERANCE_S = 3.0
    client = await agent_connect()
    talk = speech_pcm("what is the weather like in paris today")  # 2.3 s
    talk += speech_pcm("turn on the kitchen lights please")  # no pause: one 4.6 s turn
    await _mic(client, silence(0.3) + talk + silence(1.5))
    await client.until("agent.audio.end", timeout=40)
    said = client.of("transcript.final") + client.of("agent.text.done")
    heard = " ".join(f["text"] for f in said).lower()
    assert "paris" in heard or "weather" in heard, said


async def test_push_to_talk_twice_in_a_row_answers_both_utterances(agent_connect):
    """Manual mode, push-to-talk: the user releases (user.audio.end) and presses again
    (user.audio.start) before the first utterance is transcribed. on_user_audio_start calls
    _cancel_pending(), which throws away the first utterance's exchange: it is never
    transcribed, answered, carried into the next turn, or finished in the room."""
    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    await client.stream(speech_pcm("what is the weather like in paris today"), uid="u1")
    await client.stream(speech_pcm("turn on the kitchen lights please"), uid="u2")
    await client.until("agent.audio.end", timeout=40)
    said = client.of("transcript.final") + client.of("agent.text.done")
    heard = " ".join(f["text"] for f in said).lower()
    assert "paris" in heard or "weather" in heard, said


async def test_leaving_during_transcription_finishes_the_user_stream_and_exchange(
    agent_connect,
):
    """Manual mode: the user ends a turn and hangs up while Whisper runs. close() queues the
    session's end and the writer's stop sentinel *before* the cancelled exchange's handler
    queues the user stream's `done`, so that stream stays `streaming` (holding the room's floor
    until the core's lease expires) and the exchange is never finished."""
    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    await client.stream(speech_pcm("what is the weather like in paris today") + silence(0.3))
    await asyncio.sleep(0.05)
    await _leave(client)

    async def done():
        session, _, streams = await _records(client)
        stream = streams.get(f"user-{_hex(client)}-1")
        return session.ended_at and stream is not None and stream.status != "streaming"

    assert await _wait_for(done, timeout=8), "the user stream was left streaming"
    _, exchanges, _ = await _records(client)
    assert exchanges and exchanges[0].ended_at is not None


# --- two replies at once ---------------------------------------------------------------------


async def test_a_typed_turn_during_a_spoken_turn_never_leaves_two_replies_talking(
    agent_connect,
):
    """A user types while a spoken turn is open (the page streams its mic all the time and has
    a text box). The typed reply starts; when the spoken turn ends, _end_turn starts a second
    exchange without cutting the first reply, and with the same index (self.exchanges was
    bumped by the typed turn): both replies are `reply-2`, their chunks interleave with
    repeated sequence numbers, the second Exchange row hits the unique constraint, the room
    refuses the second stream's chunks ("already received with different content"), and
    agent.interrupt cuts only one of them: the other's chunks keep coming after it."""
    from tests.agents.test_agent_ws import LONG

    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    await client.stream(speech_pcm("turn on the kitchen lights please"), uid="u1", end=False)
    await client.send(type="text.input", text=LONG)
    await client.until("agent.audio.chunk", timeout=30)
    await client.send(type="user.audio.end", utteranceId="u1")
    await client.until("transcript.final", utteranceId="u1", timeout=30)
    await _drain(client, quiet=0.05, limit=1.5)
    await client.send(type="agent.interrupt")
    cut = await client.until("agent.interrupt")
    position = client.frames.index(cut)
    await _drain(client, quiet=1.0, limit=3.0)
    chunks = [f for f in client.frames if f["type"] == "agent.audio.chunk"]
    pairs = [(f["utteranceId"], f["sequence"]) for f in chunks]
    assert len(pairs) == len(set(pairs)), "two replies share an utteranceId and sequences"
    before = {
        f["utteranceId"] for f in client.frames[:position] if f["type"] == "agent.audio.chunk"
    }
    late = [
        (f["utteranceId"], f["sequence"])
        for f in client.frames[position + 1 :]
        if f["type"] == "agent.audio.chunk" and f["utteranceId"] in before
    ]
    assert not late, (
        f"audio of a reply that was talking kept coming after agent.interrupt: {late[:5]}"
    )


# --- barge-in before any audio was heard ---------------------------------------------------


@pytest.fixture
def slow_tts(monkeypatch):
    """The agent's TTS takes 1.5 s before its first chunk of each sentence (a slow engine)."""
    from agents import pipeline

    real = pipeline.synthesis_stream

    async def slow(**kwargs):
        await asyncio.sleep(1.5)
        async with contextlib.aclosing(real(**kwargs)) as chunks:
            async for chunk in chunks:
                yield chunk

    monkeypatch.setattr(pipeline, "synthesis_stream", slow)


async def test_a_reply_cut_before_its_first_audio_was_heard_has_no_heard_text(
    agent_connect, slow_tts
):
    """agent.interrupt while the first sentence is being synthesized: nothing was played
    (heard_ms 0), yet heard_text is the whole reply so far, because heard_text() treats
    0 >= audio_end (0) of the sentence in progress as "all heard". The history then tells the
    LLM the user heard a reply that never reached them, and the record says so too."""
    client = await agent_connect()
    await client.send(type="text.input", text="tell me about the northern railway")
    await client.until("agent.text.done")
    await asyncio.sleep(0.3)  # the first sentence is being synthesized, nothing sent yet
    await client.send(type="agent.interrupt")
    cut = await client.until("agent.interrupt")
    assert not client.of("agent.audio.chunk")
    assert cut["heard_ms"] == 0
    assert cut["heard_text"] == "", cut
    await client.until("turn.metrics")
    await client.close()

    async def recorded():
        _, exchanges, _ = await _records(client)
        return exchanges and exchanges[0].ended_at is not None

    await _wait_for(recorded, timeout=5)
    _, exchanges, _ = await _records(client)
    assert exchanges[0].heard_text == ""


# --- a client that leaves while the consumer is behind ---------------------------------------


async def test_leaving_with_a_backlog_of_frames_does_not_leave_a_zombie_session(
    agent_connect, monkeypatch
):
    """A client streams tiny (valid, 1-sample) binary frames faster than the consumer handles
    them, then leaves. The disconnect waits behind the backlog; the server (daphne's
    application_close_timeout, here the communicator's 1 s) cancels the application, so
    AgentSession.close() never runs: its heartbeat task keeps the room's agent seat fresh
    forever, the session is never ended and no agent can join the room again. Against a real
    daphne, 20 s of 2-byte frames did this (and left +380 MB RSS)."""
    from agents import services

    monkeypatch.setattr(services, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(services, "SESSION_STALE_S", 2.0)
    client = await agent_connect("room=zombie-room")
    assert client.session
    for _ in range(100_000):
        await client.send_bytes(b"\x01\x00")
    await _leave(client)
    await asyncio.sleep(4)

    async def ended():
        session, _, _ = await _records(client)
        return session.ended_at is not None

    assert await _wait_for(ended, timeout=10), "the session was never ended"
    again = await agent_connect("room=zombie-room")
    assert again.session, again.frames


# --- text that the database cannot store -----------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "text.input", "text": "turn on the \ud800 lights"}, "text"),
        ({"type": "session.update", "instructions": "be \udfff brief"}, "instructions"),
    ],
)
async def test_lone_surrogates_are_refused_or_stored(agent_connect, frame, field):
    """JSON allows "\\ud800" (a lone surrogate); UTF-8 does not. Today such a text.input is
    answered but its user stream and the exchange's transcript fail to write ("write failed:
    UnicodeEncodeError" in the log), and such instructions never reach the session record."""
    client = await agent_connect()
    await client.send(**frame)
    settled = "turn.metrics" if frame["type"] == "text.input" else "session.updated"
    while True:
        reply = await client.recv(timeout=20)
        if reply["type"] in ("error", settled):
            break
    if reply["type"] == "error":
        assert reply.get("field") == field, reply
        return
    await asyncio.sleep(1.0)
    session, exchanges, streams = await _records(client)
    if field == "text":
        assert exchanges and exchanges[0].transcript, "the exchange has no transcript"
        assert f"user-{_hex(client)}-1" in streams, "the typed turn never reached the room"
    else:
        assert "brief" in session.instructions, "the session record missed the update"


async def test_a_lone_surrogate_utterance_id_does_not_lose_the_exchange(agent_connect):
    """utteranceId "\\ud800" is accepted and the turn is answered, but its Exchange row
    cannot be written (UnicodeEncodeError): the session's records miss the exchange."""
    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    await client.send(type="user.audio.start", utteranceId="\ud800")
    reply = await client.recv()
    if reply["type"] == "error":
        assert reply.get("field") == "utteranceId"
        return
    await client.stream(
        speech_pcm("turn on the kitchen lights") + silence(0.3), uid="\ud800", start=False
    )
    await client.until("turn.metrics", timeout=30)
    await asyncio.sleep(0.5)
    _, exchanges, _ = await _records(client)
    assert exchanges, "no Exchange was recorded"


# --- POST /v1/audio/transcriptions: files whose cost is not their size ------------------------

TRANSCRIPTIONS = "/v1/audio/transcriptions"


def _wav(rate: int, channels: int, data: bytes, bits: int = 16) -> bytes:
    import struct

    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", 36 + len(data))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", len(data))
        + data
    )


async def _transcribe_upload(data: bytes, name: str):
    import io

    from django.test import AsyncClient

    file = io.BytesIO(data)
    file.name = name
    return await AsyncClient().post(TRANSCRIPTIONS, {"file": file, "model": "whisper-1"})


def _json_error(response) -> dict:

    assert response["Content-Type"] == "application/json", (response.status_code, response.content)
    return json.loads(response.content)


@pytest.mark.parametrize(
    ("rate", "channels", "bits"),
    [(0, 1, 16), (16000, 0, 16), (16000, 1, 0), (16000, 1, 64)],
    ids=["rate-0", "channels-0", "bits-0", "int64-pcm"],
)
async def test_a_wav_header_with_impossible_values_is_a_400_not_a_500(rate, channels, bits):
    """pydub reads the WAV header itself; a rate of 0 reaches soxr ("Sample rate should be
    over 0"), 0 channels a numpy reshape (ValueError), 0 or 64 bits per sample pydub's
    get_array_of_samples (KeyError), all outside audio_decode's try: 500 internal_error."""
    response = await _transcribe_upload(_wav(rate, channels, bytes(2000), bits), "bad.wav")
    body = _json_error(response)
    assert response.status_code == 400, body
    assert body["field"] == "file"


async def test_a_tiny_wav_at_1_hz_is_not_a_thousand_seconds_of_work():
    """A 2 KB WAV whose header says 1 Hz is 1000 s of audio once resampled to 16 kHz: 16000
    times its size in samples (random data there took 33 s of Whisper here). The cost of a
    request must be bounded by its size: refuse such a rate (or such a length)."""
    response = await _transcribe_upload(_wav(1, 1, bytes(2000)), "slow.wav")
    assert response.status_code in (400, 413), response.content
    assert _json_error(response)["field"] == "file"


async def test_a_small_compressed_file_cannot_expand_to_hours_of_audio(tmp_path):
    """Compressed uploads expand without bound: 737 KB of FLAC is two hours of audio (decoded
    in full, all in memory, then transcribed). Here 2.6 MB of 6 kb/s Opus (an hour of a tone)
    took daphne to 4.5 GB RSS and 60 s of CPU; 25 MB (the limit) would be ~10 hours. The
    decoded length must be bounded (OpenAI refuses long audio too), with an error on `file`."""
    import subprocess

    from speech.encoding import ffmpeg_exe

    path = tmp_path / "two-hours.flac"
    silence_2h = ["-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "7200"]
    command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", *silence_2h, str(path)]
    await asyncio.to_thread(subprocess.run, command, check=True)
    assert path.stat().st_size < 1_000_000
    loop = asyncio.get_running_loop()
    started = loop.time()
    response = await _transcribe_upload(path.read_bytes(), "two-hours.flac")
    assert response.status_code in (400, 413), response.content
    assert _json_error(response)["field"] == "file"
    assert loop.time() - started < 5


async def test_an_upload_without_content_length_is_not_called_missing():
    """A chunked upload (no Content-Length; `curl -H 'Transfer-Encoding: chunked'`, any
    streaming client) carries its file, but Django's parser reads a missing length as 0: the
    answer is 400 missing_file, "file is required", about a request that has one. docs/agent.md
    says such a body is handled ("stopped by an upload handler as soon as the file passes the
    limit"). It should be transcribed, or refused as 411 with a JSON error saying why."""

    from channels.testing import HttpCommunicator

    from config.asgi import application

    wav = _wav(16000, 1, speech_pcm("turn on the kitchen lights"))
    boundary = b"hostileboundary"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-1\r\n'
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="q.wav"\r\n'
        b"Content-Type: audio/wav\r\n\r\n" + wav + b"\r\n--" + boundary + b"--\r\n"
    )
    communicator = HttpCommunicator(
        application,
        "POST",
        TRANSCRIPTIONS,
        body=body,
        headers=[(b"content-type", b"multipart/form-data; boundary=" + boundary)],
    )
    response = await communicator.get_response(timeout=60)
    payload = json.loads(response["body"])
    assert response["status"] in (200, 411), payload
    if response["status"] == 200:
        assert "kitchen" in payload["text"].lower()


# --- against a real daphne -------------------------------------------------------------------


@pytest.fixture(scope="module")
def daphne(tmp_path_factory):
    import os
    import subprocess
    import sys

    from tests.support.servers import PROJECT_ROOT, DaphneProcess

    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "PARLEY_VAR_DIR": str(tmp_path_factory.mktemp("hostile-var")),
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_REQUIRE_AUTH": None,
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    server = DaphneProcess(env=env, name="daphne-hostile")
    try:
        yield server
    finally:
        server.stop()


async def test_an_abusive_client_is_really_closed_by_daphne(daphne):
    """docs/agent.md: a client refused more than 100 times in 10 s is closed with 1008. Under
    daphne, autobahn refuses to send 1008 ("invalid close code 1008 (must be 1000 or from
    [3000, 4999])"): the client is never closed, and every further refused frame spawns
    another failing close task with a traceback in the log (123 000 of them in one minute of
    50x-real-time audio here)."""
    import websockets

    async with websockets.connect(f"{daphne.ws_url}/ws/agent") as ws:
        await ws.recv()  # session.created
        for _ in range(150):
            await ws.send("nope")
        closed = None
        try:
            async with asyncio.timeout(10):
                while True:
                    await ws.recv()
        except websockets.ConnectionClosed as error:
            closed = error
        except TimeoutError:
            pass
    assert closed is not None, "still open 10 s after 150 refused frames"
    assert closed.rcvd is not None, "no close frame: the connection was dropped"
    # (daphne drops the close reason: only the code reaches the client)
    assert closed.rcvd.code == 1008 or 4000 <= closed.rcvd.code <= 4999, closed.rcvd


async def test_an_exchange_where_nothing_was_said_is_finished(agent_connect):
    """Manual mode, a turn of silence (or noise Whisper hears nothing in): transcript.final is
    "", no reply; the Exchange row keeps ended_at NULL and no metrics (stt_ms...) forever, so
    it looks in progress in the admin."""
    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    await client.stream(silence(1.0))
    final = await client.until("transcript.final")
    assert final["text"] == ""
    await asyncio.sleep(1.0)
    _, exchanges, _ = await _records(client)
    assert exchanges and exchanges[0].ended_at is not None


async def test_instructions_with_nul_are_refused_like_every_other_string(agent_connect):
    """utteranceId and text refuse NUL (PostgreSQL text cannot hold it); instructions take it
    and the session record's write then fails on PostgreSQL (DATABASE_URL deployments)."""
    client = await agent_connect()
    await client.send(type="session.update", instructions="be\x00brief")
    reply = await client.recv()
    assert reply["type"] == "error", reply["type"]
    assert reply.get("field") == "instructions"


async def test_manual_mode_audio_past_the_max_length_is_not_silently_dropped(
    agent_connect, settings
):
    """Manual mode, an utterance longer than PARLEY_AGENT_MAX_UTTERANCE_S: the turn ends at
    the limit (`max_length`) and is answered, but everything the client sends afterwards in
    the same utterance goes to the VAD's pre-roll and is thrown away: no second turn, no
    error. (The pre-roll also grows with continuous speech while no turn is open.)"""
    settings.PARLEY_AGENT_MAX_UTTERANCE_S = 2.5
    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    talk = speech_pcm("what is the weather like in paris today")  # 2.3 s
    talk += speech_pcm("turn on the kitchen lights please")  # past the limit
    await client.stream(talk + silence(0.3), uid="long")
    await client.until("turn.metrics", timeout=30)
    await _drain(client)
    said = client.of("transcript.final") + client.of("agent.text.done")
    heard = " ".join(f["text"] for f in said).lower()
    told = [f for f in client.of("error") if f.get("field") in ("audio", "utteranceId")]
    assert "kitchen" in heard or "lights" in heard or told, (said, client.of("error"))


# --- spectators -------------------------------------------------------------------------------


async def test_spectators_hear_the_cut_where_the_user_heard_it_after_a_fast_upload(
    agent_connect,
):
    """Manual mode, the user's 4.4 s utterance arrives in a burst (allowed: 30 s of credit).
    The core plays the user's stream in real time, so the reply's chunks wait for the floor
    while the client already hears the reply. The client cuts after 1 s (heard_ms ~1000,
    heard_text "You said:"); the room only gets the agent's stream once the user's playback
    ends, then the cut at once: the agent Stream's heard_ms is ~26 ms, yet the room's `speech`
    event (interrupted) carries the 1 s heard text. Spectators and the record disagree with
    what the user heard (the existing VAD test holds them within 250 ms)."""
    from streams.models import Stream

    client = await agent_connect()
    await client.send(type="session.update", turn_detection="manual")
    await client.until("session.updated")
    question = "what is the weather like in paris today, and tomorrow, and the day after"
    await client.stream(speech_pcm(question) + silence(0.3))
    await client.until("agent.audio.chunk", timeout=30)
    await asyncio.sleep(1.0)
    await client.send(type="agent.interrupt")
    cut = await client.until("agent.interrupt")
    stream_id = f"agent-{_hex(client)}-1"

    async def cut_in_room():
        def read():
            return Stream.objects.filter(stream_id=stream_id, status="interrupted").first()

        return await database_sync_to_async(read)()

    stream = await _wait_for(cut_in_room, timeout=15)
    assert stream is not None, "the reply was never cut in the room"
    assert abs((stream.heard_ms or 0) - cut["heard_ms"]) <= 250, (stream.heard_ms, cut)


async def test_a_flood_of_typed_turns_is_rate_limited(agent_connect):
    """Audio is rate-limited (30 s burst, then 4x real time), typed turns are not: 1000
    text.input frames sent in 30 ms made 1000 Exchanges, 2000 Streams, 1000 responder calls
    (an LLM request each with PARLEY_AGENT_RESPONDER=llm) and 1000 SpeechJobs in a few
    seconds, all valid frames, so the abuse budget never closes the socket either."""
    client = await agent_connect()
    for i in range(300):
        await client.send(type="text.input", text=f"message number {i}")
    await _drain(client, quiet=3.0, limit=60)
    limited = [f for f in client.of("error") if f["code"] == "rate_limited"]
    assert limited, "300 typed turns in a burst were all accepted"
    assert limited[0].get("field") == "text"


async def test_leaving_while_another_speaker_holds_the_floor_keeps_the_records(agent_connect):
    """Rooms are shared: here another speaker (npc-1) holds the floor. The agent's writes
    wait for it (30 s per write in _ingest), so the ordered writer falls behind; when the
    client leaves, close() waits 10 s for it, then cancels it with the exchange's rows and
    the session's end still queued: no Exchange, no streams, and a session that is never
    ended (against a real daphne: still open minutes later)."""

    from django.test import AsyncClient

    response = await AsyncClient().post(
        "/api/rooms/held-room/floor", {"speaker": "npc-1"}, content_type="application/json"
    )
    assert response.status_code in (200, 201), response.content
    client = await agent_connect("room=held-room")
    await client.send(type="text.input", text="hello there")
    await client.until("agent.audio.end", timeout=30)
    await _leave(client)

    async def recorded():
        session, exchanges, _ = await _records(client)
        return session.ended_at is not None and len(exchanges) == 1

    assert await _wait_for(recorded, timeout=45), json.dumps(
        {"ended": str((await _records(client))[0].ended_at)}
    )


async def test_a_live_session_keeps_its_room_while_its_writes_wait_for_the_floor(
    agent_connect, monkeypatch
):
    """The heartbeat is queued on the same ordered writer as the audio; while a write waits
    for the floor (another speaker holds it; up to 30 s per write), no heartbeat is written,
    so after SESSION_STALE_S a second client takes the room: the first, still connected and
    talking, is marked `abandoned` and the room has two live agents (seen on daphne with the
    default 10 s / 30 s)."""
    from django.test import AsyncClient

    from agents import services

    monkeypatch.setattr(services, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(services, "SESSION_STALE_S", 2.0)
    response = await AsyncClient().post(
        "/api/rooms/busy-room/floor", {"speaker": "npc-1"}, content_type="application/json"
    )
    assert response.status_code in (200, 201), response.content
    first = await agent_connect("room=busy-room")
    await first.send(type="text.input", text="hello there")
    await first.until("agent.audio.end", timeout=30)
    await asyncio.sleep(3.0)
    second = await agent_connect("room=busy-room")
    assert not second.session, "a second agent took the room of a live session"
    session, _, _ = await _records(first)
    assert session.end_reason != "abandoned"


# --- the conversation history -----------------------------------------------------------------


@pytest.fixture
async def llm_stand_in(settings):
    from tests.chat.test_responder_stream import StandIn, StreamScript

    server = StandIn()
    await server.start()
    server.script = StreamScript(deltas=["Sure. ", "Here you go."], delay_s=0.0)
    settings.PARLEY_AGENT_RESPONDER = "llm"
    settings.PARLEY_LLM_URL = server.base_url
    settings.PARLEY_LLM_MODEL = "stand-in-1"
    yield server
    await server.stop()


async def test_one_short_typed_turn_does_not_cost_the_whole_history(agent_connect, llm_stand_in):
    """The history grows without bound and every reply sends all of it to the LLM: after
    20 typed turns of 4000 characters, the 9-character turn "what time" posts ~85 KB of
    messages (40 turns: 168 KB), and it grows on, past any model's context, until the LLM
    fails every reply. Its cost should be bounded by its size, as the rules say: trim the
    history (OpenAI Realtime truncates the oldest items)."""

    client = await agent_connect()

    async def typed(text: str) -> None:
        while True:
            await client.send(type="text.input", text=text)
            while True:
                frame = await client.recv(timeout=30)
                if frame["type"] == "agent.text.done":
                    return
                if frame["type"] == "error" and frame["code"] == "rate_limited":
                    break
                assert frame["type"] != "error", frame
            await asyncio.sleep(1.1)  # typed turns may be rate-limited: wait and retry

    for i in range(20):
        await typed((f"{i} " + "blah " * 800)[:4000])
    await typed("what time")
    await _drain(client, quiet=0.5, limit=5)
    last = llm_stand_in.seen[-1]
    size = len(json.dumps(last["messages"]))
    assert size < 64_000, f"a 9-character turn sent {size} characters of messages"
