"""A voice that is not found gets the closest names as a hint, whatever its letter case:
"ALLOY" suggests 'alloy' (OpenAI's API takes only lowercase names, so neither do we)."""

from __future__ import annotations

import httpx
import pytest

from config.asgi import application
from speech.services import voice_not_found

OPENAI = ["alloy", "echo", "fable", "nova", "onyx", "shimmer"]


@pytest.mark.parametrize(
    ("asked", "suggested"),
    [("ALLOY", "'alloy'"), ("Nova", "'nova'"), ("EN-GB", "'en-gb'"), ("Narrator", "'narrator'")],
)
def test_suggestions_ignore_letter_case(asked, suggested):
    error = voice_not_found(
        asked,
        engine_name="espeak",
        openai=OPENAI,
        stored=["narrator"],
        engine_voices=["en-gb", "en-us", "de"],
    )
    assert f"Did you mean {suggested}" in error.detail, error.detail


def test_suggestions_keep_the_names_as_spelled():
    error = voice_not_found("DEEP", engine_name="espeak", stored=["Deep", "deeper"])
    assert "Did you mean 'Deep' or 'deeper'?" in error.detail, error.detail


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("drain_recorders")
async def test_speech_with_an_uppercase_openai_voice_is_404_suggesting_it():
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=application), base_url="http://t"
    ) as client:
        response = await client.post("/v1/audio/speech", json={"input": "Hi.", "voice": "ALLOY"})
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["param"]) == ("voice_not_found", "voice")
    assert "Did you mean 'alloy'" in error["message"], error["message"]
