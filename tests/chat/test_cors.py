"""CORS on the seed-004 endpoints: a page on another origin can POST JSON and play the audio.

The same django-cors-headers setup as every API path (tests/test_cors.py covers the others).
"""

from __future__ import annotations

import pytest

from config.settings.base import cors_origins
from tests.chat.conftest import NOT_FOUND, http

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "https://app.example"
PREFLIGHT = {
    "Origin": PAGE,
    "Access-Control-Request-Method": "POST",
    "Access-Control-Request-Headers": "content-type",
}


@pytest.mark.parametrize("path", ["/chat", "/audio/stream"])
async def test_preflight_allows_a_json_post_from_any_origin(path):
    async with http() as client:
        response = await client.options(path, headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "content-type" in allowed and "authorization" in allowed


async def test_answers_carry_the_origin_header_errors_too():
    async with http() as client:
        chat = await client.post(
            "/chat",
            json={"text": "Hello", "use_tts": True, "stream_audio": True},
            headers={"Origin": PAGE},
        )
        assert chat.status_code == 200
        stream = await client.get(chat.json()["stream_url"], headers={"Origin": PAGE})
        direct = await client.post(
            "/audio/stream", json={"text": "Hi.", "format": "mp3"}, headers={"Origin": PAGE}
        )
        refused = await client.post("/chat", json={"text": 5}, headers={"Origin": PAGE})
        missing = await client.get("/audio/stream/" + "0" * 32, headers={"Origin": PAGE})
    for response in (chat, stream, direct, refused, missing):
        assert response.headers["access-control-allow-origin"] == "*", response.request.url
    # a page's script may read the audio's format headers
    exposed = direct.headers["access-control-expose-headers"].lower()
    assert "x-sample-rate" in exposed and "x-bitrate" in exposed
    assert refused.status_code == 400 and missing.json() == NOT_FOUND


async def test_configured_origins_are_echoed_and_others_get_none(settings):
    for name, value in cors_origins(f"{PAGE}, https://other.example").items():
        setattr(settings, name, value)
    async with http() as client:
        allowed = await client.options("/chat", headers=PREFLIGHT)
        elsewhere = await client.options(
            "/chat", headers={**PREFLIGHT, "Origin": "https://x.example"}
        )
        posted = await client.post("/chat", json={"text": "Hello"}, headers={"Origin": PAGE})
    assert allowed.headers["access-control-allow-origin"] == PAGE
    assert "origin" in allowed.headers["vary"].lower()
    assert "access-control-allow-origin" not in elsewhere.headers
    assert "access-control-allow-methods" not in elsewhere.headers
    assert posted.headers["access-control-allow-origin"] == PAGE
