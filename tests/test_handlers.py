"""API paths take the lean handler (no page middleware); pages keep Django's full stack."""

from __future__ import annotations

import base64

import httpx
import pytest

from config.asgi import application
from config.handlers import is_api_path

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    ("path", "api"),
    [
        ("/audio", True),
        ("/audio/stream/abc", True),
        ("/api/rooms/x/floor", True),
        ("/v1/audio/speech", True),
        ("/chat", True),
        ("/health", True),
        ("/streaming/force_stop", True),
        ("/static/audio/s1.wav", True),
        ("/admin/", False),
        ("/docs", False),
        ("/openapi.json", False),
        ("/static/admin/css/base.css", False),
        ("/", False),
    ],
)
def test_paths_are_split_between_the_api_and_pages(path, api):
    assert is_api_path(path) is api


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


async def test_the_api_answers_without_page_middleware_but_with_security_headers():
    body = {"stream_id": "h1", "seq": 0, "data": base64.b64encode(b"\0\0").decode(), "done": True}
    async with client() as http:
        chunk = await http.post("/audio", json=body)
        page = await http.get("/admin/login/")
        as_html = await http.get("/api/rooms/default", headers={"Accept": "text/html"})
    assert chunk.status_code == 200, chunk.text
    assert chunk.headers["X-Content-Type-Options"] == "nosniff"  # SecurityMiddleware, inline
    assert "X-Frame-Options" not in chunk.headers and "set-cookie" not in chunk.headers
    assert page.status_code == 200
    assert page.headers["X-Frame-Options"] == "DENY"  # the full stack
    assert "csrftoken" in page.headers.get("set-cookie", "")
    # JSON only, even to a client asking for HTML (config/negotiation.py).
    assert as_html.status_code == 200
    assert as_html.headers["Content-Type"].startswith("application/json")


async def test_errors_on_the_api_are_json_not_a_500_page():
    async with client() as http:
        malformed = await http.post(
            "/audio", content=b"{", headers={"Content-Type": "application/json"}
        )
        missing = await http.get("/api/streams/nope")
    assert malformed.status_code == 400 and malformed.json()["error"] == "malformed_json"
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
