"""CORS on every API surface, one setting (docs/api.md "CORS"), through the real ASGI
application; pages get none. The browser itself: tests/web/test_cors_browser.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from django.test import Client

from config.asgi import application
from config.handlers import API_PREFIXES
from config.settings.base import cors_origins
from tests.support.servers import PROJECT_ROOT

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = "https://app.example"
# What the OpenAI JS SDK (v4/v5, dangerouslyAllowBrowser) asks a preflight to allow.
SDK_HEADERS = (
    "authorization,content-type,openai-organization,openai-project,x-stainless-arch,"
    "x-stainless-lang,x-stainless-os,x-stainless-package-version,x-stainless-retry-count,"
    "x-stainless-runtime,x-stainless-runtime-version,x-stainless-timeout,x-api-key"
)
# (method, path) of each surface: a preflight for it, then the request itself.
SURFACES = [
    ("POST", "/v1/audio/speech"),
    ("GET", "/v1/models"),
    ("GET", "/v1/voices"),
    ("POST", "/audio"),
    ("GET", "/audio/" + "0" * 32 + ".wav"),
    ("POST", "/audio/stream"),
    ("GET", "/api/rooms/lobby"),
    ("GET", "/api/streams"),
    ("GET", "/api/recordings"),
    ("POST", "/chat"),
    ("GET", "/health"),
    ("GET", "/memory"),
    ("GET", "/static/audio/nope.wav"),
    ("POST", "/streaming/force_stop"),
    ("GET", "/openapi.json"),
    ("GET", "/asyncapi.yaml"),
]
PAGES = ["/", "/rooms/lobby/", "/tts/", "/record/", "/admin/login/"]


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


def preflight(method: str, origin: str = PAGE) -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": SDK_HEADERS,
    }


@pytest.fixture
def origins(settings):
    def configure(value: str) -> None:
        for name, setting in cors_origins(value).items():
            setattr(settings, name, setting)

    return configure


@pytest.mark.parametrize(("method", "path"), SURFACES)
async def test_every_api_surface_answers_preflights_and_requests(method, path):
    async with http() as client:
        answer = await client.options(path, headers=preflight(method))
        assert answer.status_code == 200, answer.text
        assert answer.headers["access-control-allow-origin"] == "*"
        assert method in answer.headers["access-control-allow-methods"]
        allowed = {h.strip() for h in answer.headers["access-control-allow-headers"].split(",")}
        assert set(SDK_HEADERS.split(",")) <= allowed
        assert {"range", "*"} <= allowed
        assert answer.headers["access-control-max-age"] == "600"
        assert "access-control-allow-credentials" not in answer.headers

        # The request itself, whatever it answers (many refuse an empty body): readable.
        kwargs = {"json": {}} if method == "POST" else {}
        response = await client.request(method, path, headers={"Origin": PAGE}, **kwargs)
        assert response.headers["access-control-allow-origin"] == "*", response.status_code
        exposed = response.headers["access-control-expose-headers"].lower()
        for name in ("content-range", "accept-ranges", "content-length", "retry-after", "etag"):
            assert name in exposed


async def test_the_audio_headers_are_exposed_on_a_synthesis():
    async with http() as client:
        response = await client.post(
            "/v1/audio/speech",
            json={"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "wav"},
            headers={"Origin": PAGE, "Authorization": "Bearer whatever-unused"},
        )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == "*"
    exposed = response.headers["access-control-expose-headers"].lower()
    for name in response.headers:
        if name.lower().startswith("x-") and name.lower() not in (
            "x-content-type-options",
            "x-accel-buffering",
            "x-frame-options",
        ):
            assert name.lower() in exposed, name


async def test_the_api_layers_own_refusals_carry_cors_too(settings):
    async with http() as client:
        too_big = await client.post(
            "/audio",
            headers={
                "Origin": PAGE,
                "Content-Type": "application/json",
                "Content-Length": str(settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1),
            },
            content=b"{}",
        )
        nul = await client.get("/api/streams?room=%00", headers={"Origin": PAGE})
    assert too_big.status_code == 413 and nul.status_code == 400
    for response in (too_big, nul):
        assert response.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize("path", PAGES)
async def test_pages_get_no_cors(path):
    async with http() as client:
        answer = await client.options(path, headers=preflight("GET"))
        page = await client.get(path, headers={"Origin": PAGE})
    for response in (answer, page):
        assert not any(h.startswith("access-control-") for h in response.headers), path


def test_the_settings_regex_covers_every_api_prefix():
    import re

    from django.conf import settings

    for prefix in API_PREFIXES:
        if prefix != "/bench/":
            assert re.match(settings.CORS_URLS_REGEX, prefix + "x"), prefix
    for page in PAGES:
        assert not re.match(settings.CORS_URLS_REGEX, page), page


async def test_listed_origins_are_echoed_and_others_get_nothing(origins):
    origins("https://app.example, http://localhost:5173/")
    async with http() as client:
        for origin in ("https://app.example", "http://localhost:5173"):
            answer = await client.options("/v1/audio/speech", headers=preflight("POST", origin))
            assert answer.headers["access-control-allow-origin"] == origin
            assert "origin" in answer.headers["vary"].lower()
            got = await client.get("/health", headers={"Origin": origin})
            assert got.headers["access-control-allow-origin"] == origin
        for origin in ("https://evil.example", "http://localhost:5174", "null"):
            answer = await client.options("/v1/audio/speech", headers=preflight("POST", origin))
            assert "access-control-allow-origin" not in answer.headers
            assert "access-control-allow-headers" not in answer.headers
            got = await client.get("/health", headers={"Origin": origin})
            assert "access-control-allow-origin" not in got.headers


def test_the_page_middleware_stack_answers_the_same(origins):
    # Django's test client runs settings.MIDDLEWARE (the stack pages use), not the API's
    # handler: the same headers, so tests written either way see one behaviour.
    client = Client()
    answer = client.options("/chat", headers=preflight("POST"))
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == "*"
    assert client.get("/", headers={"Origin": PAGE}).get("access-control-allow-origin") is None
    origins(PAGE)
    assert client.get("/health", headers={"Origin": PAGE})["access-control-allow-origin"] == PAGE


async def test_socketio_answers_a_page_on_another_origin():
    async with http() as client:
        handshake = await client.get(
            "/socket.io/", params={"EIO": "4", "transport": "polling"}, headers={"Origin": PAGE}
        )
    assert handshake.status_code == 200, handshake.text
    assert handshake.headers["access-control-allow-origin"] == PAGE
    # docs/api.md "CORS": no credentials mode, on the socket either.
    assert "access-control-allow-credentials" not in handshake.headers


def _settings_in_a_process(env: dict[str, str]) -> dict:
    code = (
        "import django, json; django.setup(); from django.conf import settings; "
        "from recordings.sio import _cors_origins; print(json.dumps({"
        "'all': settings.CORS_ALLOW_ALL_ORIGINS, 'listed': settings.CORS_ALLOWED_ORIGINS, "
        "'socketio': _cors_origins()}))"
    )
    names = ("PARLEY_CORS_ORIGINS", "PARLEY_CHAT_CORS_ORIGINS", "PARLEY_SOCKETIO_CORS_ORIGINS")
    base = {k: v for k, v in os.environ.items() if k not in names}
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=PROJECT_ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings.test", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_one_setting_with_the_old_names_as_deprecated_aliases():
    assert _settings_in_a_process({}) == {"all": True, "listed": [], "socketio": "*"}
    one = {"all": False, "listed": ["https://a.example"], "socketio": ["https://a.example"]}
    assert _settings_in_a_process({"PARLEY_CORS_ORIGINS": "https://a.example"}) == one
    assert _settings_in_a_process({"PARLEY_CHAT_CORS_ORIGINS": "https://a.example"}) == one
    assert _settings_in_a_process({"PARLEY_SOCKETIO_CORS_ORIGINS": "https://a.example"}) == one
    assert (
        _settings_in_a_process(
            {"PARLEY_CORS_ORIGINS": "https://a.example", "PARLEY_CHAT_CORS_ORIGINS": "*"}
        )
        == one
    )
