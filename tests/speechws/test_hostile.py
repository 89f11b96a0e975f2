"""Bad and hostile clients of WS /v1/audio/speech/ws: every bad frame gets an error naming the
field (or a clean close with a reason), the session goes on, and nothing is a traceback."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


async def expect_error(client, code: str, field: str | None = None) -> dict:
    error = await client.until("error")
    assert error["code"] == code, error
    assert error.get("field") == field, error
    assert error["detail"]
    return error


@pytest.mark.parametrize(
    ("raw", "code", "field"),
    [
        ("not json", "invalid_json", None),
        ("[1, 2]", "invalid_json", None),
        ('"text"', "invalid_json", None),
        ("[" * 100_00 + "]" * 100_00, "invalid_json", None),
        ("{}", "missing_field", "type"),
        ('{"type": 7}', "missing_field", "type"),
        ('{"type": "speak"}', "unknown_type", "type"),
        ('{"type": "input_text.append"}', "missing_field", "text"),
        ('{"type": "input_text.append", "text": 5}', "invalid_text", "text"),
        ('{"type": "input_text.append", "text": null}', "missing_field", "text"),
        ('{"type": "input_text.append", "text": "a\\u0000b"}', "invalid_text", "text"),
        ('{"type": "input_text.append", "text": "\\ud800"}', "invalid_text", "text"),
        ('{"type": "input_text.append", "text": "hi", "flush": "yes"}', "invalid_flush", "flush"),
        ('{"type": "input_text.append", "text": "hi", "voice": "x"}', "unknown_field", "voice"),
        ('{"type": "input_text.flush", "now": true}', "unknown_field", "now"),
        ('{"type": "cancel", "id": 1}', "unknown_field", "id"),
        ('{"type": "session.update", "speed": 9}', "invalid_speed", "speed"),
        ('{"type": "session.update", "speed": "fast"}', "invalid_speed", "speed"),
        ('{"type": "session.update", "sample_rate": 1000}', "invalid_sample_rate", "sample_rate"),
        (
            '{"type": "session.update", "response_format": "mp3"}',
            "invalid_response_format",
            "response_format",
        ),
        (
            '{"type": "session.update", "exaggeration": -0.1}',
            "invalid_exaggeration",
            "exaggeration",
        ),
        (
            '{"type": "session.update", "max_sentence_chars": 10}',
            "invalid_max_sentence_chars",
            "max_sentence_chars",
        ),
        ('{"type": "session.update", "input": "hi"}', "unknown_field", "input"),
        ('{"type": "session.update", "model": "gpt-9"}', "unknown_model", "model"),
    ],
)
async def test_a_bad_frame_gets_an_error_and_the_session_goes_on(speech_ws, raw, code, field):
    client = await speech_ws()
    await client.send_raw(raw)
    await expect_error(client, code, field)
    await client.append("Still here.", flush=True)
    done = await client.until("sentence.done")
    assert done["status"] == "completed" and done["text"] == "Still here."


async def test_an_unknown_voice_names_the_valid_ones(speech_ws):
    client = await speech_ws()
    await client.send(type="session.update", voice="nvoa")
    error = await expect_error(client, "voice_not_found", "voice")
    assert "nova" in error["detail"] and "alloy" in error["detail"]
    await client.send(type="session.update", voice={"id": "nova"})
    assert (await client.until("session.updated"))["session"]["voice"] == "nova"


async def test_binary_huge_and_overlong_frames(speech_ws, settings):
    settings.PARLEY_TTS_WS_MAX_SESSION_CHARS = 5000
    client = await speech_ws()
    await client.send_bytes(b"\x00\x01" * 100)
    await expect_error(client, "binary_not_accepted")
    await client.send_raw(json.dumps({"type": "input_text.append", "text": "a " * 40_000}))
    await expect_error(client, "frame_too_large")
    await client.append("b" * 4097)
    await expect_error(client, "text_too_long", "text")
    await client.append("c " * 2000)  # 4000 characters: taken
    await client.append("d " * 600)  # 1200 more: over the session's 5000, refused whole
    error = await expect_error(client, "session_text_limit", "text")
    assert "5000" in error["detail"]
    await client.send(type="cancel")
    cancelled = await client.until("cancelled")
    assert cancelled["text_end"] == 4000  # the refused frame added nothing


async def test_after_end_frames_are_refused_and_the_session_closes_normally(speech_ws):
    client = await speech_ws()
    await client.append("Last words")
    await client.send(type="end")
    await client.append("more")
    await expect_error(client, "session_ending", "type")
    done = await client.until("session.done")
    assert done["usage"]["sentences"] == 1
    close = await client.until("<close>")
    assert close["code"] == 1000


async def test_too_many_refusals_close_the_socket(speech_ws):
    client = await speech_ws()
    for _ in range(101):
        await client.send_raw("nope")
    close = await client.until("<close>", timeout=30)
    assert close["code"] == 4008
    assert len(client.of("error")) == 101


async def test_refused_settings_at_connect_close_with_4400(speech_ws):
    client = await speech_ws("speed=9")
    assert client.messages[0]["code"] == "invalid_speed"
    assert client.messages[0]["field"] == "speed"
    assert (await client.recv())["code"] == 4400
    client = await speech_ws("voice=nobody")
    assert client.messages[0]["code"] == "voice_not_found"
    assert (await client.recv())["code"] == 4400
    client = await speech_ws("colour=blue")
    assert client.messages[0]["code"] == "unknown_field"
    assert client.messages[0]["field"] == "colour"
    assert (await client.recv())["code"] == 4400


async def test_a_key_is_needed_when_the_server_requires_one(speech_ws, settings):
    from channels.db import database_sync_to_async

    from streams.auth import api_key_create

    settings.PARLEY_REQUIRE_AUTH = True
    client = await speech_ws()
    assert client.messages[0]["code"] == "auth_required"
    assert (await client.recv())["code"] == 4401
    client = await speech_ws("api_key=pk_wrong")
    assert client.messages[0]["code"] == "invalid_api_key"
    assert (await client.recv())["code"] == 4401
    _key, raw = await database_sync_to_async(api_key_create)(speaker="llm")
    client = await speech_ws(f"api_key={raw}")
    assert client.session
    client = await speech_ws(headers=[(b"authorization", f"Bearer {raw}".encode())])
    assert client.session


async def test_an_idle_session_is_closed_with_4408(speech_ws, settings):
    settings.PARLEY_TTS_WS_IDLE_S = 1.0
    client = await speech_ws()
    await client.append("Unfinished")
    error = await client.until("error", timeout=10)
    assert error["code"] == "idle_timeout"
    assert (await client.recv())["code"] == 4408


async def test_an_error_never_comes_between_an_audio_frame_and_its_bytes(speech_ws):
    """Refusals answered while audio streams: each `audio` frame is still followed at once by
    its binary frame, as the protocol says (a reader pairs them by position)."""
    client = await speech_ws()
    await client.append("Audio keeps flowing while the client misbehaves. " * 6, flush=True)
    for _ in range(60):
        await client.send_raw("oops")
    await client.until("input_text.flushed")
    messages = client.messages
    audio_at = [i for i, m in enumerate(messages) if m["type"] == "audio"]
    assert len(audio_at) > 10 and len(client.of("error")) == 60
    for index in audio_at:
        assert messages[index + 1]["type"] == "<bytes>", [
            m["type"] for m in messages[index : index + 3]
        ]
        assert len(messages[index + 1]["data"]) == messages[index]["bytes"]
