"""/v1/audio/speech through the official openai SDK against a real daphne process."""

from __future__ import annotations

import base64
import io
import json
import struct
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from unittest.mock import ANY

import httpx
import openai
import pytest

from tests.speech.audio import decoded_seconds, expected_seconds_range, probed
from tests.tts.test_openai_compat import Script

TEXT = "The quick brown fox jumps over the lazy dog. Then it runs far away into the woods."
FORMATS = ["mp3", "opus", "aac", "flac", "wav", "pcm"]


def validation_error(code: str, message: str, field: str | None) -> dict:
    """The body of a 422 on the speech endpoints: OpenAI's error object and FastAPI's detail."""
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error",
            "param": field,
            "code": code,
        },
        "detail": [{"loc": ["body", field], "msg": message, "type": "value_error"}],
        "field": field,
    }


def speak(sdk: openai.OpenAI, **fields) -> tuple[bytes, httpx.Headers, list[int]]:
    """The whole body, the headers, and the size of each piece as it arrived."""
    fields = {"model": "tts-1", "voice": "alloy", "input": TEXT, **fields}
    with sdk.audio.speech.with_streaming_response.create(**fields) as response:
        pieces = [piece for piece in response.iter_bytes() if piece]
        return b"".join(pieces), response.headers, [len(p) for p in pieces]


@pytest.fixture(scope="module")
def reference_seconds(daphne) -> float:
    sdk = openai.OpenAI(base_url=f"{daphne.url}/v1", api_key="unused", max_retries=0)
    body, _, _ = speak(sdk, response_format="pcm")
    return len(body) / 2 / 24000


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_streams_and_decodes_to_a_plausible_duration(sdk, reference_seconds, fmt):
    body, headers, pieces = speak(sdk, response_format=fmt)
    low, high = expected_seconds_range(TEXT)
    assert low < reference_seconds < high
    seconds = decoded_seconds(body, fmt)
    # Codecs pad a little (encoder delay, frame rounding); the speech itself is all there.
    assert abs(seconds - reference_seconds) < 0.15, (fmt, seconds, reference_seconds)
    assert headers["x-speech-job-id"]
    expected_type = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac"}
    assert headers["content-type"].startswith(expected_type.get(fmt, f"audio/{fmt}"))
    assert "content-length" not in headers  # chunked: sent while synthesized
    if fmt in ("pcm", "wav", "mp3"):
        assert len(pieces) > 1  # arrived in several pieces, not as one blob
    # flac is sent once encoded, its header complete (tests/speech/test_flac.py)


def test_pcm_default_is_24khz_as_openai_documents(sdk, reference_seconds):
    _, headers, _ = speak(sdk, response_format="pcm")
    assert headers["x-sample-rate"] == "24000"


def test_default_format_is_mp3(sdk):
    body, headers, _ = speak(sdk)
    assert headers["content-type"] == "audio/mpeg"
    assert decoded_seconds(body, "mp3") > 1


def test_wav_parses_with_python_wave_and_resamples(sdk, reference_seconds):
    body, _, _ = speak(sdk, response_format="wav", extra_body={"sample_rate": 16000})
    assert body[:4] == b"RIFF" and struct.unpack("<I", body[4:8])[0] == 0xFFFFFFFF
    with wave.open(io.BytesIO(body)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 16000)
        frames = wav.readframes(wav.getnframes())
    assert abs(len(frames) / 2 / 16000 - reference_seconds) < 0.05


def test_speed_changes_duration(sdk, reference_seconds):
    body, headers, _ = speak(sdk, response_format="pcm", speed=2.0)
    assert headers["x-speed-applied"] == "2"
    assert len(body) / 2 / 24000 < reference_seconds * 0.65


def parse_sse(body: str) -> list[tuple[str, dict]]:
    events = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_sse_events_parse_in_order(sdk, reference_seconds):
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1", voice="alloy", input=TEXT, extra_body={"stream_format": "sse"}
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        body = response.read().decode()
    events = parse_sse(body)
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "speech.audio.info" and kinds[-1] == "speech.audio.done"
    assert set(kinds[1:-1]) == {"speech.audio.delta"} and len(kinds) > 3
    assert all(data["type"] == kind for kind, data in events)
    info = events[0][1]
    assert (info["channels"], info["bits_per_sample"]) == (1, 16)
    pcm = b"".join(base64.b64decode(data["audio"]) for _, data in events[1:-1])
    seconds = len(pcm) / 2 / info["sample_rate"]
    assert abs(seconds - reference_seconds) < 0.05
    usage = events[-1][1]["usage"]
    assert usage["input_tokens"] == 19  # 17 words and 2 full stops
    assert usage["output_tokens"] == -(-round(seconds * 1000) // 20)
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_pcm_is_24khz_like_plain_pcm(sdk, reference_seconds):
    # OpenAI clients play SSE deltas as 24 kHz and ignore speech.audio.info: the transport
    # must not change the rate (issue 10: it was the engine's 22,050 Hz, 9 % fast and high).
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=TEXT,
        response_format="pcm",
        extra_body={"stream_format": "sse"},
    ) as response:
        events = parse_sse(response.read().decode())
    assert events[0][1]["sample_rate"] == 24000
    pcm = b"".join(base64.b64decode(data["audio"]) for kind, data in events[1:-1])
    assert abs(len(pcm) / 2 / 24000 - reference_seconds) < 0.05


@pytest.mark.parametrize(
    "model", ["gpt-4o-mini-tts-2025-12-15", "gpt-4o-mini-tts-2025-03-20", "tts-1-1106"]
)
def test_dated_model_snapshots_are_aliases_of_their_model(sdk, reference_seconds, model):
    body, _, _ = speak(sdk, model=model, response_format="pcm")
    assert abs(len(body) / 2 / 24000 - reference_seconds) < 0.05


def test_an_unknown_dated_model_is_still_refused(sdk):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.audio.speech.create(model="gpt-9-tts-2025-12-15", voice="alloy", input=TEXT)
    assert (caught.value.code, caught.value.param) == ("unknown_model", "model")


@pytest.mark.parametrize("text", ["\u200b\u200b", "\u200d\ufeff", "\x07", "...", " — "])
def test_input_with_nothing_to_say_is_no_audio_not_silence(sdk, text):
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.audio.speech.create(model="tts-1", voice="alloy", input=text)
    assert (caught.value.code, caught.value.param) == ("no_audio", "input")


def test_an_unknown_voice_is_404_naming_the_valid_voices(sdk):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk.audio.speech.create(model="tts-1", voice="no-such-voice", input=TEXT)
    error = caught.value
    assert (error.code, error.param, error.type) == (
        "voice_not_found",
        "voice",
        "invalid_request_error",
    )
    message = error.response.json()["error"]["message"]
    assert "'no-such-voice'" in message
    assert all(name in message for name in ("alloy", "nova", "espeak voices")), message
    assert "GET /v1/voices" in message
    close = sdk.audio.speech.create  # a near miss gets a suggestion
    with pytest.raises(openai.NotFoundError) as caught:
        close(model="tts-1", voice="en-uss", input=TEXT)
    assert "Did you mean 'en-us'" in caught.value.response.json()["error"]["message"]


def test_voice_as_an_object_names_the_voice(sdk, reference_seconds):
    body, _, _ = speak(sdk, voice={"id": "alloy"}, response_format="pcm")
    assert abs(len(body) / 2 / 24000 - reference_seconds) < 0.05
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        sdk.audio.speech.create(model="tts-1", voice={"name": "alloy"}, input=TEXT)
    assert (caught.value.code, caught.value.param) == ("invalid_voice", "voice")


def test_sse_with_a_compressed_format_carries_that_format(sdk, reference_seconds):
    with sdk.audio.speech.with_streaming_response.create(
        model="tts-1",
        voice="alloy",
        input=TEXT,
        response_format="mp3",
        extra_body={"stream_format": "sse"},
    ) as response:
        events = parse_sse(response.read().decode())
    assert events[0][1]["response_format"] == "mp3"
    mp3 = b"".join(base64.b64decode(data["audio"]) for _, data in events[1:-1])
    assert abs(decoded_seconds(mp3, "mp3") - reference_seconds) < 0.15


def test_the_seed_stream_endpoint_is_one_continuous_wav(daphne, reference_seconds):
    with httpx.stream(
        "POST",
        f"{daphne.url}/audio/speech/stream",  # the bare seed path, alias of /v1/
        json={"input": TEXT, "streaming_strategy": "word", "streaming_chunk_size": 50},
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "audio/wav"
        body = response.read()
    assert len(body) > 44 and body[36:40] == b"data"
    assert struct.unpack("<I", body[40:44])[0] == 0xFFFFFFFF
    with wave.open(io.BytesIO(body)) as wav:
        assert wav.getframerate() == 22050
        seconds = len(wav.readframes(wav.getnframes())) / 2 / 22050
    # Cut at every few words, each piece ends with a pause: longer than the sentence cut.
    assert seconds > reference_seconds


def test_eight_simultaneous_requests_all_get_correct_audio(sdk):
    texts = [f"Request number {n} says {' '.join(['hello'] * (n + 2))}." for n in range(8)]

    def solo(text: str) -> float:
        body, _, _ = speak(sdk, input=text, response_format="wav")
        with wave.open(io.BytesIO(body)) as wav:
            return len(wav.readframes(wav.getnframes())) / 2 / wav.getframerate()

    alone = [solo(text) for text in texts]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(solo, texts))
    for a, b in zip(alone, together, strict=True):
        assert abs(a - b) < 0.05
    assert sorted(alone) == alone  # more words, longer audio: no request got another's


def progress(daphne, job_id: str) -> dict:
    return httpx.get(f"{daphne.url}/v1/status/progress/{job_id}").json()


def wait_for_status(daphne, job_id: str, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = progress(daphne, job_id)
        if not state["is_processing"] or time.monotonic() > deadline:
            return state
        time.sleep(0.02)


def test_a_client_disconnect_cancels_the_job_and_stops_the_engine(daphne):
    text = "This sentence keeps going on and on for a while. " * 80  # ~4000 characters
    with httpx.stream(
        "POST", f"{daphne.url}/v1/audio/speech", json={"input": text, "response_format": "pcm"}
    ) as response:
        job_id = response.headers["x-speech-job-id"]
        next(response.iter_raw())
    state = wait_for_status(daphne, job_id)
    assert state["job_status"] == "cancelled"
    assert state["current_chunk"] < state["total_chunks"]
    full_bytes = len(text.split()) * 0.3 * 24000 * 2
    assert state["audio_bytes"] < full_bytes / 2


def test_disconnect_stops_an_upstream_engine_within_one_chunk(daphne, standin):
    # The openai engine streaming from a slow server: 40 pieces, 50 ms apart.
    standin.reset(Script(pieces=[b"\x01\x00" * 2400] * 40, delay=0.05))
    with httpx.stream(
        "POST",
        f"{daphne.url}/v1/audio/speech",
        json={"model": "openai", "input": "Slow upstream.", "response_format": "pcm"},
    ) as response:
        job_id = response.headers["x-speech-job-id"]
        next(response.iter_raw())
        written_at_close = standin.pieces_written
    assert standin.disconnected.wait(2.0)
    assert standin.pieces_written <= written_at_close + 2
    assert wait_for_status(daphne, job_id)["job_status"] == "cancelled"


def test_openai_engine_forwards_only_the_knobs_given(sdk, standin):
    standin.reset(Script(pieces=[b"\x01\x00" * 2400] * 5, delay=0))
    body, _, _ = speak(
        sdk,
        model="openai",
        voice="shimmer",
        response_format="pcm",
        extra_body={"exaggeration": 1.2, "temperature": 0.3},
    )
    assert len(body) == 5 * 4800
    sent = standin.requests[-1].json
    assert sent["voice"] == "shimmer" and sent["input"] == TEXT
    assert sent["exaggeration"] == 1.2 and sent["temperature"] == 0.3
    assert "cfg_weight" not in sent and "streaming_chunk_size" not in sent


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"input": ""}, 422, "input"),
        ({"input": "   "}, 422, "input"),
        ({"input": "x" * 4097}, 400, "input"),
        ({"speed": 0.1}, 422, "speed"),
        ({"speed": 4.5}, 422, "speed"),
        ({"response_format": "ogg"}, 422, "response_format"),
        ({"model": "tts-9"}, 400, "model"),
        ({"voice": "no-such-voice"}, 404, "voice"),
        ({"extra_body": {"stream_format": "video"}}, 422, "stream_format"),
        ({"extra_body": {"sample_rate": 7999}}, 422, "sample_rate"),
        ({"extra_body": {"sample_rate": "fast"}}, 422, "sample_rate"),
        ({"extra_body": {"exaggeration": 2.5}}, 422, "exaggeration"),
        ({"extra_body": {"cfg_weight": -0.1}}, 422, "cfg_weight"),
        ({"extra_body": {"temperature": 0.01}}, 422, "temperature"),
        ({"extra_body": {"streaming_chunk_size": 49}}, 422, "streaming_chunk_size"),
        ({"extra_body": {"streaming_chunk_size": 100.5}}, 422, "streaming_chunk_size"),
        ({"extra_body": {"streaming_strategy": "line"}}, 422, "streaming_strategy"),
        ({"extra_body": {"streaming_buffer_size": 11}}, 422, "streaming_buffer_size"),
        ({"extra_body": {"streaming_quality": "best"}}, 422, "streaming_quality"),
        ({"extra_body": {"speed": True}}, 422, "speed"),
        ({"extra_body": {"unknown_knob": 1}}, 422, "unknown_knob"),
    ],
)
def test_every_bad_input_is_a_json_error_naming_the_field(sdk, fields, status, field):
    request = {"model": "tts-1", "voice": "alloy", "input": TEXT, **fields}
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.audio.speech.create(**request)
    error = caught.value
    assert error.status_code == status
    # What an OpenAI client shows: OpenAI's error object, with Parley's explanation.
    body = error.response.json()
    assert (error.param, error.type) == (field, "invalid_request_error")
    assert error.code == body["error"]["code"] and error.code
    assert body["error"]["message"] in error.message and len(body["error"]["message"]) > 20
    assert body["field"] == field
    if status == 422:  # the seed system's FastAPI validation detail, beside OpenAI's error
        assert body["detail"] == [
            {"loc": ["body", field], "msg": body["error"]["message"], "type": ANY}
        ]
    else:
        assert body["detail"] == body["error"]["message"]


@pytest.mark.parametrize(
    "fields",
    [
        {"input": "\ud800"},
        {"input": "Hi.", "voice": "al\udc00loy"},
        {"input": "Hi.", "instructions": "\ud800"},
    ],
)
def test_a_lone_surrogate_is_refused_in_validation_naming_the_field(daphne, fields):
    # JSON may carry "\\ud800"; the text cannot be encoded, so no engine or database sees it.
    response = httpx.post(
        f"{daphne.url}/v1/audio/speech",
        content=json.dumps({"response_format": "pcm", **fields}),
        headers={"Content-Type": "application/json"},
    )
    field = next(name for name, value in fields.items() if "\\u" in json.dumps(value))
    assert response.status_code == 422
    assert response.json() == validation_error(
        f"invalid_{field}", f"{field} is not valid Unicode text (a lone surrogate).", field
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"input": "Hi.\u0000there"},
        {"input": "Hi.", "voice": "al\u0000loy"},
        {"input": "Hi.", "instructions": "\u0000"},
    ],
)
def test_a_nul_character_is_refused_in_validation_naming_the_field(daphne, fields):
    # Refused like a lone surrogate, as the schema's pattern says (tests/fuzz): the engines
    # take C strings (eSpeak silently stopped reading at the NUL) and PostgreSQL's text
    # columns cannot hold one. Before, input and instructions with a NUL were spoken (200).
    response = httpx.post(
        f"{daphne.url}/v1/audio/speech",
        content=json.dumps({"response_format": "pcm", **fields}),
        headers={"Content-Type": "application/json"},
    )
    field = next(name for name, value in fields.items() if "\x00" in value)
    assert response.status_code == 422
    assert response.json() == validation_error(
        f"invalid_{field}", f"{field} must not contain NUL characters.", field
    )


@pytest.mark.parametrize(
    ("content", "headers", "status", "error"),
    [
        (b"{not json", {"Content-Type": "application/json"}, 422, "malformed_json"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 422, "malformed_json"),
        (b"input=hi", {"Content-Type": "text/plain"}, 415, "unsupported_media_type"),
        (b'{"voice": "alloy"}', {"Content-Type": "application/json"}, 422, "missing_input"),
    ],
)
def test_malformed_bodies_are_json_errors(daphne, content, headers, status, error):
    response = httpx.post(f"{daphne.url}/v1/audio/speech", content=content, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == error
    kinds = {"malformed_json": "json_invalid", "missing_input": "missing"}
    if error in kinds:
        assert response.json()["detail"][0]["type"] == kinds[error]


def test_wrong_method_is_a_json_405(daphne):
    response = httpx.get(f"{daphne.url}/v1/audio/speech")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    ("fmt", "fields", "rate", "kbps"),
    [
        ("mp3", {"sample_rate": 12345}, 12000, 64),  # MPEG-2.5: LAME's ceiling is 64
        ("mp3", {"streaming_quality": "high"}, 24000, 160),  # not 192: MPEG-2 stops at 160
        ("mp3", {"sample_rate": 44100, "streaming_quality": "high"}, 44100, 192),
        ("aac", {"sample_rate": 12345}, 12000, 72),  # 128 asked, 6144 bits a frame at 12 kHz
        ("aac", {"streaming_quality": "high"}, 24000, 144),  # 6144 bits a 1024-sample frame
        ("opus", {"sample_rate": 12345}, 12000, 64),
    ],
)
def test_encoded_rate_and_bitrate_are_what_the_headers_say(daphne, fmt, fields, rate, kbps):
    response = httpx.post(
        f"{daphne.url}/v1/audio/speech",
        json={"input": TEXT, "response_format": fmt, **fields},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-sample-rate"] == str(rate)
    assert response.headers["x-bitrate"] == f"{kbps}k"
    probed_rate, probed_kbps = probed(response.content)
    if fmt == "opus":
        probed_rate = int(response.headers["x-sample-rate"])  # ogg reports 48 kHz playback
    assert probed_rate == rate
    if fmt == "mp3":
        assert probed_kbps == kbps  # constant bitrate: every frame header says it
    elif fmt == "aac":
        assert probed_kbps is not None and probed_kbps <= kbps * 1.05  # an average


def test_sse_info_reports_the_rate_the_encoder_used(daphne):
    response = httpx.post(
        f"{daphne.url}/v1/audio/speech",
        json={
            "input": "Hi.",
            "stream_format": "sse",
            "response_format": "mp3",
            "sample_rate": 12345,
        },
        timeout=30,
    )
    info = json.loads(response.text.split("data: ", 1)[1].split("\n", 1)[0])
    audio = b"".join(
        base64.b64decode(json.loads(line[6:])["audio"])
        for line in response.text.splitlines()
        if line.startswith("data: ") and '"speech.audio.delta"' in line
    )
    assert info["type"] == "speech.audio.info" and info["sample_rate"] == 12000
    assert probed(audio)[0] == 12000
