"""Fixes from the fresh-clone review (its finding numbers in each test's name): API paths
answer JSON whatever the client asks for, the docs pages never fail, names and echoes are
bounded. Through the real ASGI application, on both databases."""

from __future__ import annotations

import httpx
import pytest
from channels.testing import WebsocketCommunicator

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


@pytest.mark.parametrize("room", ["%2e", "%2e%2e", "...", "." * 64])
async def test_9_rooms_named_only_dots_are_refused(room):
    async with http() as client:
        floor = await client.post(f"/api/rooms/{room}/floor", json={"speaker": "alice"})
        state = await client.get(f"/api/rooms/{room}")
        listed = await client.get(f"/api/streams?room={room}")
    for answer in (floor, state, listed):
        assert answer.status_code == 400, answer.text[:300]
        assert (answer.json()["error"], answer.json()["field"]) == ("invalid_room", "room")
        assert "only dots" in answer.json()["detail"]


@pytest.mark.parametrize("room", [".hidden", "a.b", "..x", "x.."])
async def test_9_names_with_dots_and_more_are_rooms(room):
    async with http() as client:
        answer = await client.get(f"/api/rooms/{room}")
    assert answer.status_code == 200, answer.text[:300]


async def test_17_an_empty_room_on_the_spectator_socket_is_refused():
    refused = WebsocketCommunicator(application, "/spectate/ws?room=")
    assert (await refused.connect())[0]
    message = await refused.receive_json_from()
    assert (message["type"], message["error"], message["field"]) == (
        "error",
        "invalid_room",
        "room",
    )
    assert (await refused.receive_output())["type"] == "websocket.close"
    # No room at all is the documented default room.
    default = WebsocketCommunicator(application, "/spectate/ws")
    assert (await default.connect())[0]
    state = await default.receive_json_from()
    assert (state["type"], state["room"]) == ("state", "default")
    await default.disconnect()


@pytest.mark.parametrize(
    "path",
    [
        "/api/streams/{id}",
        "/api/streams/{id}/audio.wav",
        "/api/recordings/{id}",
        "/static/audio/{id}.wav",
        "/api/nothing-here/{id}",
    ],
)
async def test_17_a_not_found_repeats_at_most_100_characters_of_an_id(path):
    long_id = "a" * 5000
    async with http() as client:
        answer = await client.get(path.format(id=long_id))
    assert answer.status_code == 404, answer.text[:300]
    detail = answer.json()["detail"]
    assert "a" * 101 not in detail and "(5" in detail  # cut, saying how long it was
    assert len(answer.content) < 500


def test_11_a_limit_out_of_range_names_the_bound_that_holds():
    from django.test import Client

    for path in ("/api/rooms?limit=0", "/api/streams?limit=0", "/api/rooms?limit=x"):
        detail = Client().get(path).json()["detail"]
        assert "limit must be an integer of at least 1" in detail, detail
        assert "10000" not in detail and "500" in detail  # larger ones are capped at 500


def test_14_a_django_request_warning_is_printed_once(settings):
    import logging

    settings.DEBUG = True  # Django's own console handler prints only with DEBUG (bin/serve)
    logger = logging.getLogger("django.request")
    record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "Not Found", (), None)
    printing = []
    current: logging.Logger | None = logger
    while current is not None:  # the handlers logging.Logger.callHandlers would run
        printing += [
            h
            for h in current.handlers
            if isinstance(h, logging.StreamHandler)
            and type(h).__module__.startswith(("logging", "django"))
            and record.levelno >= h.level
            and h.filter(record)
        ]
        current = current.parent if current.propagate else None
    assert len(printing) == 1, printing
