"""Multi-voice streaming (issue 10 §6): `input` as a list of `{"voice", "input"}` segments,
spoken in order as one audio stream, in every format and over SSE, through the real ASGI
application (the suite's database: SQLite or PostgreSQL) and a real daphne for the SDK."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import wave

import httpx
import openai
import pytest
from channels.db import database_sync_to_async

from config.asgi import application
from speech.models import SpeechJob
from speech.params import MAX_SEGMENTS, Segment, joined_text, segment_offsets
from speech.services import _RECORDERS, synthesis_stream, usage_for
from tests.speech.audio import decoded_seconds
from tests.support.errors import flat_error
from tests.tts.test_openai_compat import Script, SpeechServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_recorders")]

DIALOGUE = [
    {"voice": "nova", "input": "Good morning. Did you sleep well?"},
    {"voice": "onyx", "input": "Not really, the storm kept me awake."},
    {"voice": "fable", "input": "Tea, then. Lots of it."},
]
FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "flac")
# Decoders pad a compressed stream (mp3 and aac priming, opus pre-skip, frame rounding).
SLACK_S = {"pcm": 0.01, "wav": 0.01, "flac": 0.01, "mp3": 0.12, "opus": 0.12, "aac": 0.15}
# The standin "openai" engine answers every request with 1 s of 24 kHz PCM.
STANDIN_PIECE = b"\x01\x00" * 2400


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


def seconds(response: httpx.Response, fmt: str) -> float:
    rate = int(response.headers["x-sample-rate"])
    return decoded_seconds(response.content, fmt, pcm_rate=rate)


def sse_events(body: bytes) -> list[tuple[str, dict]]:
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def speak(
    client: httpx.AsyncClient, path: str = "/v1/audio/speech", **body
) -> httpx.Response:
    return await client.post(path, json=body)


@pytest.fixture
def upstream(settings, standin: SpeechServer) -> SpeechServer:
    """The "openai" engine (24 kHz) over the stand-in server."""
    settings.PARLEY_OPENAI_TTS_URL = standin.base_url
    standin.reset(Script(pieces=[STANDIN_PIECE] * 10, delay=0))
    return standin


# --- one stream, every format -------------------------------------------------------------


@pytest.mark.parametrize("fmt", FORMATS)
async def test_every_format_is_one_stream_as_long_as_its_segments(fmt):
    async with http() as client:
        whole = await speak(client, input=DIALOGUE, response_format=fmt)
        assert whole.status_code == 200, whole.text
        parts = [await speak(client, response_format=fmt, **segment) for segment in DIALOGUE]
    assert all(part.status_code == 200 for part in parts)
    assert whole.headers["x-speech-engine"] == "espeak"
    expected = sum(seconds(part, fmt) for part in parts)
    got = seconds(whole, fmt)
    # Each compressed part carries its own padding, the whole stream only once.
    slack = SLACK_S[fmt] * len(DIALOGUE)
    assert abs(got - expected) <= slack, (fmt, got, expected)
    assert got > 4.0  # three sentences of speech


async def test_wav_is_each_segment_in_its_own_voice_byte_for_byte():
    """At the engine's rate nothing is resampled and eSpeak NG is deterministic: the stream
    is exactly each segment spoken on its own, in order, so each has its own voice."""
    async with http() as client:
        whole = await speak(client, input=DIALOGUE, response_format="wav")
        parts = [await speak(client, response_format="wav", **segment) for segment in DIALOGUE]
        swapped = await speak(
            client,
            input=[{**DIALOGUE[0], "voice": "onyx"}, *DIALOGUE[1:]],
            response_format="wav",
        )
    header = 44
    assert whole.content[header:] == b"".join(part.content[header:] for part in parts)
    assert swapped.content[header:] != whole.content[header:]  # the voice made a difference


async def test_sse_deltas_are_the_whole_dialogue_and_usage_counts_all_of_it():
    async with http() as client:
        streamed = await speak(client, input=DIALOGUE, stream_format="sse")
        plain = await speak(client, input=DIALOGUE, response_format="pcm")
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = sse_events(streamed.content)
    assert events[0][0] == "speech.audio.info" and events[0][1]["sample_rate"] == 24000
    assert events[-1][0] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for k, e in events if k == "speech.audio.delta")
    assert abs(decoded_seconds(audio, "pcm") - decoded_seconds(plain.content, "pcm")) < 0.01
    text = joined_text(Segment(**segment) for segment in DIALOGUE)
    assert events[-1][1]["usage"] == usage_for(text, len(audio), 24000)


async def test_sse_in_mp3_and_the_continuous_wav_endpoint():
    async with http() as client:
        streamed = await speak(client, input=DIALOGUE, stream_format="sse", response_format="mp3")
        plain = await speak(client, input=DIALOGUE, response_format="mp3")
        continuous = await speak(client, "/v1/audio/speech/stream", input=DIALOGUE)
        bare = await speak(client, "/audio/speech/stream", input=DIALOGUE)
        upload = await speak(client, "/v1/audio/speech/upload", input=DIALOGUE)
    events = sse_events(streamed.content)
    audio = b"".join(base64.b64decode(e["audio"]) for k, e in events if k == "speech.audio.delta")
    assert abs(decoded_seconds(audio, "mp3") - decoded_seconds(plain.content, "mp3")) < 0.05
    for response in (continuous, bare):
        assert response.status_code == 200 and response.headers["content-type"] == "audio/wav"
        assert response.content[:4] == b"RIFF"
    assert abs(seconds(continuous, "wav") - seconds(bare, "wav")) < 0.01
    assert upload.status_code == 200  # the upload endpoint takes a JSON body too


# --- engines and rates --------------------------------------------------------------------


async def test_segments_on_engines_of_different_rates_are_resampled_to_one(upstream):
    dialogue = [
        {"voice": "nova", "input": "Hello from eSpeak."},  # 22,050 Hz
        {"voice": "echo", "model": "openai", "input": "And hello from upstream."},  # 24 kHz
        {"input": "Back to eSpeak."},
    ]
    async with http() as client:
        wav = await speak(client, input=dialogue, response_format="wav")
        pcm = await speak(client, input=dialogue, response_format="pcm", sample_rate=16000)
        espeak_only = [await speak(client, response_format="wav", **dialogue[i]) for i in (0, 2)]
    assert wav.status_code == 200, wav.text
    # The output rate is the highest of the segments' engines' (24 kHz), in the header.
    assert wav.headers["x-sample-rate"] == "24000"
    assert wav.headers["x-speech-engine"] == "espeak+openai"
    with wave.open(io.BytesIO(wav.content)) as reader:
        assert reader.getframerate() == 24000
    expected = sum(seconds(part, "wav") for part in espeak_only) + 1.0
    assert abs(seconds(wav, "wav") - expected) < 0.01
    assert abs(seconds(pcm, "pcm") - expected) < 0.01
    # The upstream got its segment's text and voice, not the others'.
    sent = [seen.json for seen in upstream.requests]
    assert [body["input"] for body in sent] == [dialogue[1]["input"]] * 2
    assert {body["voice"] for body in sent} == {"echo"}


async def test_espeak_and_piper_voices_in_one_stream():
    dialogue = [
        {"voice": "alloy", "input": "I am eSpeak."},
        {"model": "piper", "input": "And I am Piper."},
    ]
    async with http() as client:
        whole = await speak(client, input=dialogue, response_format="pcm")
        parts = [await speak(client, response_format="pcm", **segment) for segment in dialogue]
    assert whole.status_code == 200, whole.text
    assert whole.headers["x-speech-engine"] == "espeak+piper"
    expected = sum(seconds(part, "pcm") for part in parts)
    # Piper samples its durations: its part may differ a little from run to run.
    assert abs(seconds(whole, "pcm") - expected) < 0.35


# --- the job, usage and marks -------------------------------------------------------------


async def test_the_job_records_the_whole_request_and_each_segment():
    async with http() as client:
        response = await speak(client, input=DIALOGUE, voice="alloy", response_format="pcm")
    job_id = response.headers["x-speech-job-id"]
    # The job's final state is written by its recorder just after the stream ends.
    if _RECORDERS:
        await asyncio.wait(list(_RECORDERS), timeout=5)
    job = await database_sync_to_async(SpeechJob.objects.get)(pk=job_id)
    text = joined_text(Segment(**segment) for segment in DIALOGUE)
    assert job.text == text and job.text_chars == len(text)
    assert job.voice == "nova+onyx+fable" and job.engine == "espeak"
    assert job.engine_voice == "en-us+f4+en-us+m8+en-gb-x-rp+m4"
    segments = job.params["segments"]
    assert [s["voice"] for s in segments] == ["nova", "onyx", "fable"]
    assert [text[s["start"] : s["end"]] for s in segments] == [s["input"] for s in DIALOGUE]
    assert job.usage == usage_for(text, len(response.content), 24000)
    assert job.status == "completed" and job.audio_bytes == len(response.content)


async def test_marks_point_into_the_joined_text_and_the_whole_output():
    segments = [Segment(**segment) for segment in DIALOGUE]
    text = joined_text(segments)
    offsets = segment_offsets(segments)
    chunks = synthesis_stream(
        text=text, model=None, voice=None, segments=segments, sample_rate=24000
    )
    seen_segments, marks, total = [], [], 0
    async for chunk in chunks:
        seen_segments.append(chunk.segment)
        marks += [(mark, chunk.segment) for mark in chunk.marks]
        total += len(chunk.pcm)
    assert seen_segments == sorted(seen_segments) and set(seen_segments) == {0, 1, 2}
    words = [(mark, segment) for mark, segment in marks if mark.kind == "word"]
    assert words
    for mark, segment in words:
        start, end = offsets[segment], offsets[segment] + len(segments[segment].input)
        assert start <= mark.text_offset < end
        assert 0 <= mark.audio_offset <= total
    audio_offsets = [mark.audio_offset for mark, _ in words]
    assert audio_offsets == sorted(audio_offsets)
    # The first word of a later segment is heard after everything before it.
    first_of = {}
    for mark, segment in words:
        first_of.setdefault(segment, mark)
    assert first_of[0].audio_offset < first_of[1].audio_offset < first_of[2].audio_offset
    assert text[first_of[1].text_offset :].startswith("Not")


async def test_marks_of_one_voice_stay_within_its_audio():
    """An engine's marks count from the start of its piece: a piece of several chunks must
    not push them past the audio (they did, counted from each chunk)."""
    text = " ".join([segment["input"] for segment in DIALOGUE] * 4)
    total, words = 0, []
    async for chunk in synthesis_stream(text=text, model=None, voice="nova", sample_rate=24000):
        total += len(chunk.pcm)
        words += [mark for mark in chunk.marks if mark.kind == "word"]
    assert len(words) == len(text.split())
    assert words[-1].audio_offset < total
    # The last word starts within its last 1.5 s, not past the end.
    assert total - words[-1].audio_offset < 1.5 * 48000


async def test_a_segment_without_voice_or_model_takes_the_requests():
    async with http() as client:
        response = await speak(
            client, voice="onyx", input=[{"input": "One."}, {"voice": "nova", "input": "Two."}]
        )
    job_id = response.headers["x-speech-job-id"]
    job = await database_sync_to_async(SpeechJob.objects.get)(pk=job_id)
    assert [s["voice"] for s in job.params["segments"]] == ["onyx", "nova"]


# --- errors, each naming its segment --------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code", "field", "loc"),
    [
        ({"input": []}, 422, "invalid_input", "input", ["body", "input"]),
        ({"input": ["Hello."]}, 422, "invalid_input", "input[0]", ["body", "input", 0]),
        (
            {"input": [{"input": "Hi."}, {"voice": 7, "input": "Yo."}]},
            422,
            "invalid_voice",
            "input[1].voice",
            ["body", "input", 1, "voice"],
        ),
        (
            {"input": [{"input": "Hi."}, {"voice": "nova"}]},
            422,
            "missing_input",
            "input[1].input",
            ["body", "input", 1, "input"],
        ),
        (
            {"input": [{"input": "Hi.", "speed": 2}]},
            422,
            "unknown_field",
            "input[0].speed",
            ["body", "input", 0, "speed"],
        ),
        (
            {"input": [{"input": "Hi."}, {"input": "   "}]},
            422,
            "invalid_input",
            "input[1].input",
            ["body", "input", 1, "input"],
        ),
        (
            {"input": [{"input": "Hi."}] * (MAX_SEGMENTS + 1)},
            422,
            "invalid_input",
            "input",
            ["body", "input"],
        ),
        (
            {"input": [{"input": "Hi."}, {"voice": {"name": "x"}, "input": "Yo."}]},
            422,
            "invalid_voice",
            "input[1].voice",
            ["body", "input", 1, "voice"],
        ),
    ],
)
async def test_validation_names_the_segment_and_its_field(body, status, code, field, loc):
    async with http() as client:
        response = await speak(client, **body)
    assert response.status_code == status, response.text
    error = flat_error(response.json(), "/v1/audio/speech")
    assert (error["error"], error["field"]) == (code, field)
    assert response.json()["detail"][0]["loc"] == loc


async def test_an_unknown_voice_is_404_naming_its_segment():
    async with http() as client:
        response = await speak(
            client, input=[{"voice": "nova", "input": "Hi."}, {"voice": "nvoa", "input": "Yo."}]
        )
        inherited = await speak(client, voice="nvoa", input=[{"input": "Hi."}])
        model = await speak(client, input=[{"input": "Hi."}, {"model": "tts-9", "input": "Yo."}])
    body = response.json()
    assert response.status_code == 404
    assert body["error"]["code"] == "voice_not_found"
    assert body["error"]["param"] == "input[1].voice"
    assert body["error"]["message"].startswith("input[1]: Voice 'nvoa' not found")
    assert "Did you mean 'nova'?" in body["error"]["message"]
    # A voice the segment took from the request: the request's field, the segment named.
    assert inherited.status_code == 404
    assert inherited.json()["error"]["param"] == "voice"
    assert inherited.json()["error"]["message"].startswith("input[0]: ")
    assert model.status_code == 400
    assert (model.json()["error"]["code"], model.json()["error"]["param"]) == (
        "unknown_model",
        "input[1].model",
    )
    # Nothing was synthesized: the voices are checked before any audio.
    assert await database_sync_to_async(SpeechJob.objects.count)() == 0


async def test_limits_text_in_all_segments_and_silent_segments():
    async with http() as client:
        too_long = await speak(
            client, input=[{"input": "a" * 3000}, {"voice": "nova", "input": "b" * 1097}]
        )
        fits = await speak(
            client,
            input=[{"input": "Hello. " * 100}, {"voice": "nova", "input": "Bye."}],
            response_format="pcm",
        )
        silent = await speak(client, input=[{"input": "Hi."}, {"input": "?!\u200b"}])
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "input_too_long"
    assert too_long.json()["error"]["param"] == "input"
    assert "4097" in too_long.json()["error"]["message"]
    assert fits.status_code == 200
    assert silent.status_code == 422
    assert (silent.json()["error"]["code"], silent.json()["error"]["param"]) == (
        "no_audio",
        "input[1].input",
    )


async def test_multipart_input_is_text_even_if_it_looks_like_a_list():
    async with http() as client:
        response = await client.post(
            "/v1/audio/speech/upload",
            data={"input": '[{"voice": "nova", "input": "Hi."}]', "response_format": "pcm"},
        )
    assert response.status_code == 200
    job = await database_sync_to_async(SpeechJob.objects.get)(
        pk=response.headers["x-speech-job-id"]
    )
    assert job.text.startswith("[{") and "segments" not in job.params


# --- the schema and the SDKs ----------------------------------------------------------------


async def test_the_schema_describes_the_segments():
    async with http() as client:
        schema = (await client.get("/openapi.json?format=json")).json()
    body = schema["paths"]["/v1/audio/speech"]["post"]["requestBody"]["content"]
    text, segments = body["application/json"]["schema"]["properties"]["input"]["oneOf"]
    assert text["type"] == "string" and text["maxLength"] == 4096
    assert segments["type"] == "array" and segments["maxItems"] == MAX_SEGMENTS
    items = segments["items"]
    assert set(items["properties"]) == {"voice", "input", "model"}
    assert items["required"] == ["input"] and items["additionalProperties"] is False
    assert "espeak" in items["properties"]["model"]["enum"]
    upload = schema["paths"]["/v1/audio/speech/upload"]["post"]["requestBody"]["content"]
    assert upload["multipart/form-data"]["schema"]["properties"]["input"]["type"] == "string"
    assert "oneOf" in upload["application/json"]["schema"]["properties"]["input"]
    # A refused segment's loc holds its index: the error schema allows it.
    detail = schema["components"]["schemas"]["OpenAIError"]["properties"]["detail"]["oneOf"][1]
    loc = detail["items"]["properties"]["loc"]["items"]
    assert {"type": "integer"} in loc["anyOf"]


async def test_the_async_openai_sdk_sends_segments_in_extra_body():
    """The SDK types `input` as a string: a client passes the segments in extra_body."""
    transport = httpx.ASGITransport(app=application)
    client = openai.AsyncOpenAI(
        base_url="http://t/v1",
        api_key="unused",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=transport, base_url="http://t"),
    )
    async with client:
        audio = await client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input="",
            response_format="wav",
            extra_body={"input": DIALOGUE},
        )
        with pytest.raises(openai.NotFoundError) as refused:
            await client.audio.speech.create(
                model="tts-1",
                voice="alloy",
                input="",
                response_format="wav",
                extra_body={"input": [{"voice": "nvoa", "input": "Hi."}]},
            )
    with wave.open(io.BytesIO(audio.content)) as reader:
        assert reader.getnframes() / reader.getframerate() > 4.0
    assert refused.value.body["param"] == "input[0].voice"
    assert "input[0]: Voice 'nvoa'" in refused.value.body["message"]


def test_the_openai_sdk_streams_a_dialogue_from_daphne(sdk: openai.OpenAI):
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="",
        response_format="pcm",
        extra_body={"input": DIALOGUE},
    ) as response:
        pcm = b"".join(response.iter_bytes())
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input="",
        response_format="pcm",
        extra_body={"input": DIALOGUE, "stream_format": "sse"},
    ) as response:
        events = sse_events(b"".join(response.iter_bytes()))
    sse_pcm = b"".join(base64.b64decode(e["audio"]) for k, e in events if k == "speech.audio.delta")
    assert abs(decoded_seconds(pcm, "pcm") - decoded_seconds(sse_pcm, "pcm")) < 0.01
    assert decoded_seconds(pcm, "pcm") > 4.0
