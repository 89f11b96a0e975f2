"""/v1/audio/speech refusals as the official openai npm package shows them to a JavaScript
user (issue 10 §1): the SDK builds its message from `error.message` and reads `param`, `code`
and `type` from OpenAI's error object; with Parley's flat shape it showed only the code."""

from __future__ import annotations

import json

from tests.support.node import run_node


def test_the_js_sdk_shows_the_explanation_param_and_code(daphne):
    requests = [
        {"model": "tts-1", "voice": "no-such-voice", "input": "Hello."},
        {"model": "tts-1", "voice": "alloy", "input": "Hello.", "speed": 9},
        {"model": "tts-1", "voice": "alloy", "input": "\u200b\u200b"},
        {"model": "tts-1", "voice": "alloy", "input": "x" * 4097},
        {"model": "tts-1", "voice": "alloy", "input": "Hello.", "response_format": "pcm"},
    ]
    out = run_node("speech_errors.mjs", f"{daphne.url}/v1", json.dumps(requests))
    unknown_voice, bad_speed, nothing, too_long, fine = map(json.loads, out.splitlines())

    assert unknown_voice["class"] == "NotFoundError" and unknown_voice["status"] == 404
    assert (unknown_voice["code"], unknown_voice["param"]) == ("voice_not_found", "voice")
    assert unknown_voice["type"] == "invalid_request_error"
    # The user reads why, and what would work, in the message itself.
    assert "no-such-voice" in unknown_voice["message"] and "alloy" in unknown_voice["message"]

    assert bad_speed["class"] == "UnprocessableEntityError" and bad_speed["status"] == 422
    assert (bad_speed["code"], bad_speed["param"]) == ("invalid_speed", "speed")
    assert "between 0.25 and 4" in bad_speed["message"]

    assert (nothing["status"], nothing["code"], nothing["param"]) == (422, "no_audio", "input")
    assert "nothing to say" in nothing["message"]

    # A text over the limit is the server's limit, not malformed: 400, as before.
    assert (too_long["status"], too_long["code"]) == (400, "input_too_long")
    assert "4096" in too_long["message"]

    assert fine == {"ok": True, "bytes": fine["bytes"]} and fine["bytes"] > 10_000
