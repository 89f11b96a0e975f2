"""Fixes from the fresh-clone review (its finding numbers in each test's name): API paths
answer JSON whatever the client asks for, the docs pages never fail, names and echoes are
bounded. Through the real ASGI application, on both databases."""

from __future__ import annotations

import httpx
import pytest

from config.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/openapi.json"])
async def test_1_options_on_the_docs_is_answered_not_a_500(path):
    async with http() as client:
        answer = await client.options(path)
    assert answer.status_code in (200, 405), answer.text[:300]
    assert "GET" in answer.headers["allow"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/rooms?limit=0", 400),
        ("/api/streams/nope", 404),
        ("/api/rooms", 200),
        ("/api/rooms?format=api", 200),
    ],
)
@pytest.mark.parametrize("accept", ["text/html", "text/html,application/xhtml+xml", "*/*"])
async def test_7_api_paths_answer_json_whatever_the_accept_header(path, status, accept):
    async with http() as client:
        answer = await client.get(path, headers={"Accept": accept})
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["content-type"].startswith("application/json")
    answer.json()


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        ("/api/rooms?format=xml", 200, "application/json"),
        ("/api/streams?format=xml", 200, "application/json"),
        ("/api/rooms/lobby?format=xml", 200, "application/json"),
        ("/api/rooms/lobby?format=api", 200, "application/json"),
        ("/openapi.json?format=yaml", 200, "application/vnd.oai.openapi+json"),
        ("/docs?format=json", 200, "text/html"),
        ("/redoc?format=json", 200, "text/html"),
    ],
)
async def test_8_a_format_parameter_is_ignored(path, status, content_type):
    async with http() as client:
        answer = await client.get(path)
    assert answer.status_code == status, answer.text[:300]
    assert answer.headers["content-type"].startswith(content_type)
