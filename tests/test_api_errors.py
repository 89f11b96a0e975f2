"""No input makes the API answer a 500 or an HTML page: every refusal is the JSON error shape
(or a WebSocket close with a code and a reason), on both databases (issue 8, section 2).

In process (the ASGI application) for what the API layer decides; against a real server
started as bin/serve starts it (`python -m config.server`, config/server.py) for what only
the server sees: malformed HTTP, bodies over the cap, slow clients, the close reason, and a
PostgreSQL that stops and comes back.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping

import httpx
import pytest
import websockets
import yaml
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.asgi import application
from tests.support.errors import flat_error
from tests.support.parley_server import running_server
from tests.support.servers import PARLEY_SERVER, PROJECT_ROOT, DaphneProcess, KillablePostgres

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(180)]

NUL_PATH = {
    "error": "not_found",
    "detail": "No endpoint at a path with a NUL character.",
    "field": None,
}


def asgi_client() -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=application, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://t")


def assert_json_error(response: httpx.Response, status: int, error: str) -> dict:
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"] == "application/json", response.headers
    body = flat_error(response.json(), response.url.path)
    assert body["error"] == error, body
    return body


# --------------------------------------------------------------------------------------------
# in process: the API layer (config/handlers.py, config/errors.py)


@pytest.mark.parametrize(
    "path",
    [
        "/api/streams/%00",
        "/api/streams/%00/audio.wav",
        "/api/recordings/%00",
        "/v1/voices/%00",
        "/v1/voices/a%00b/download",
        "/audio/stream/%00",
        "/static/audio/%00.wav",
        "/api/rooms/%00/floor",
    ],
)
async def test_a_nul_in_the_path_is_a_json_404_on_every_database(path):
    async with asgi_client() as http:
        response = await http.get(path)
    assert_json_error(response, 404, "not_found")
    assert flat_error(response.json()) == NUL_PATH


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/api/streams?speaker=%00", "speaker"),
        ("/api/streams?room=a%00", "room"),
        ("/api/recordings?speaker=%00", "speaker"),
        ("/api/rooms/r1/events?types=%00", "types"),
        ("/v1/voices?name=%00", "name"),
    ],
)
async def test_a_nul_in_a_query_value_is_invalid_that_field(path, name):
    async with asgi_client() as http:
        response = await http.get(path)
    body = assert_json_error(response, 400, f"invalid_{name}")
    assert body["field"] == name


async def test_a_nul_in_a_query_name_is_an_invalid_query():
    async with asgi_client() as http:
        response = await http.get("/api/streams?sp%00eaker=a")
    assert_json_error(response, 400, "invalid_query")


async def test_a_body_over_the_limit_is_a_json_413_before_any_view():
    too_big = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1
    async with asgi_client() as http:
        chat = await http.post(
            "/chat", content=b"x" * too_big, headers={"Content-Type": "application/json"}
        )
        force_stop = await http.post(
            "/streaming/force_stop",
            content=b"a=" + b"x" * too_big,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        say = await http.post(
            "/api/rooms/r1/say", content=b"x" * too_big, headers={"Content-Type": "text/plain"}
        )
    for response in (chat, force_stop, say):
        assert_json_error(response, 413, "body_too_large")


async def test_an_invalid_content_length_is_refused():
    async with asgi_client() as http:
        response = await http.post(
            "/audio",
            content=b"{}",
            headers={"Content-Type": "application/json", "Content-Length": "-5"},
        )
    assert_json_error(response, 400, "invalid_content_length")


async def test_django_refusals_on_api_paths_are_json():
    """SuspiciousOperation (too many fields) and a multipart Django cannot parse, raised in a
    view: handler400's JSON, not Django's HTML 400 page."""
    fields = "&".join(f"f{i}=1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1))
    async with asgi_client() as http:
        many = await http.post(
            "/streaming/force_stop",
            content=fields.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        multipart = await http.post(
            "/streaming/force_stop",
            content=b"garbage",
            headers={"Content-Type": "multipart/form-data"},
        )
    assert_json_error(many, 400, "too_many_fields")
    assert_json_error(multipart, 400, "malformed_multipart")


@pytest.mark.parametrize("path", ["/static/%2e%2e/manage.py", "/static/admin/..%2f..%2fREADME.md"])
async def test_a_static_path_out_of_the_static_dirs_is_a_404(path):
    async with asgi_client() as http:
        response = await http.get(path)
    assert response.status_code == 404, response.text[:200]


async def test_a_websocket_to_an_unknown_path_is_closed_with_4404():
    communicator = WebsocketCommunicator(application, "/no/such/socket")
    connected, _ = await communicator.connect()
    assert connected
    closed = await communicator.receive_output(5)
    assert closed == {
        "type": "websocket.close",
        "code": 4404,
        "reason": "not_found: no WebSocket endpoint at /no/such/socket",
    }
    await communicator.wait()


# --------------------------------------------------------------------------------------------
# a real server, started as bin/serve starts it


def _run(env: Mapping[str, str | None], *args: str) -> subprocess.CompletedProcess[str]:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run(
        args, cwd=PROJECT_ROOT, env=merged, capture_output=True, text=True, check=True
    )


@pytest.fixture(scope="module")
def server() -> Iterator[DaphneProcess]:
    """`python -m config.server` on this leg's database (a fresh one on $DATABASE_URL), no
    Redis and no keys required."""
    with running_server(require_auth=False, redis_url="") as parley:
        yield parley.daphne


def raw_exchange(port: int, request: bytes, *, timeout: float = 30.0) -> tuple[bytes, float]:
    """Send `request` as is and read until the server closes; (bytes read, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    return data, time.monotonic() - started


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


@pytest.mark.parametrize("content_type", ["multipart/form-data", "multipart/form-data; boundary="])
@pytest.mark.parametrize(
    "path", ["/v1/voices", "/v1/audio/transcriptions", "/streaming/force_stop"]
)
def test_malformed_multipart_is_a_json_400_under_the_server(server, path, content_type):
    response = httpx.post(
        server.url + path,
        content=b"--never-ending\r\ngarbage",
        headers={"Content-Type": content_type},
        timeout=30,
    )
    assert 400 <= response.status_code < 500, response.text
    assert response.headers.get("Content-Type") == "application/json", response.headers
    assert set(response.json()) >= {"error", "detail", "field"}


def test_malformed_http_is_a_json_400(server):
    data, _ = raw_exchange(server.port, b"GARBAGE\r\n\r\n")
    status, headers, body = parse_response(data)
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "bad_request"


def test_a_body_over_the_cap_is_refused_before_it_is_sent(server):
    """Content-Length over the cap: 413 from the headers alone; a chunked body: 413 once past."""
    length = 100 * 1024 * 1024
    head = (
        f"POST /streaming/force_stop HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n\r\n"
    ).encode()
    data, seconds = raw_exchange(server.port, head + b"a=1")
    status, headers, body = parse_response(data)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"] == "body_too_large"
    assert seconds < 10

    def chunked():
        piece = b"x" * 65536
        for _ in range(settings.DATA_UPLOAD_MAX_MEMORY_SIZE // len(piece) + 8):
            yield piece

    try:
        response = httpx.post(
            server.url + "/chat",
            content=chunked(),
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
    except httpx.WriteError:
        return  # closed while we were still sending: refused, which is the point
    assert_json_error(response, 413, "body_too_large")


def test_slow_clients_are_closed(server):
    """Half the headers then nothing; headers trickled a line a second; a body that stalls:
    each connection is closed by the server (408 for headers), within generous bounds."""
    results: dict[str, tuple[bytes, float]] = {}

    async def stalled_headers() -> None:
        results["stalled"] = await asyncio.to_thread(
            raw_exchange, server.port, b"GET /api/streams HTTP/1.1\r\nHost: t\r\n", timeout=90
        )

    async def trickled_headers() -> None:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/streams HTTP/1.1\r\n")
        data = b""
        try:
            for i in range(90):
                writer.write(f"X-Slow-{i}: {i}\r\n".encode())
                await writer.drain()
                try:
                    data += await asyncio.wait_for(reader.read(65536), 1.0)
                except TimeoutError:
                    continue
                if reader.at_eof():
                    break
        except ConnectionError:
            pass
        writer.close()
        results["trickled"] = (data, time.monotonic() - started)

    async def stalled_body() -> None:
        results["body"] = await asyncio.to_thread(
            raw_exchange,
            server.port,
            b"POST /chat HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{",
            timeout=90,
        )

    async def kept_alive() -> None:
        """A kept-alive connection after its answer: closed silently, never a 408 unasked."""
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /api/streams HTTP/1.1\r\nHost: t\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: (\d+)", head)
        if length:
            await reader.readexactly(int(length.group(1)))
        else:  # chunked
            await reader.readuntil(b"\r\n0\r\n\r\n")
        after = await asyncio.wait_for(reader.read(), 90)
        writer.close()
        results["kept"] = (after, time.monotonic() - started)

    async def all_of_them() -> None:
        await asyncio.gather(stalled_headers(), trickled_headers(), stalled_body(), kept_alive())

    asyncio.run(all_of_them())
    for kind in ("stalled", "trickled"):
        data, seconds = results[kind]
        assert seconds < 45, (kind, seconds)
        status, _, body = parse_response(data)
        assert status == 408 and json.loads(body)["error"] == "request_timeout", kind
    _, seconds = results["body"]
    assert seconds < 60
    after, seconds = results["kept"]
    assert after == b"" and seconds < 60, (after, seconds)


def test_an_unknown_websocket_path_closes_with_a_code_and_a_reason(server):
    async def connect() -> websockets.ConnectionClosed:
        async with websockets.connect(server.ws_url + "/ws/nowhere") as ws:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value

    closed = asyncio.run(connect())
    assert closed.rcvd.code == 4404
    assert closed.rcvd.reason == "not_found: no WebSocket endpoint at /ws/nowhere"
    assert "Traceback" not in server.log() and "ERROR" not in server.log()


def test_the_commands_run_the_server_entry_point():
    """bin/serve, the image and the compose file start config.server (its timeouts)."""
    assert re.search(
        r"\n\s*exec \.venv/bin/python -m config\.server ", (PROJECT_ROOT / "bin/serve").read_text()
    )
    assert '"python", "-m", "config.server"' in (PROJECT_ROOT / "Dockerfile").read_text()
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    for worker in ("web1", "web2"):
        assert compose["services"][worker]["command"][:3] == ["python", "-m", "config.server"]


# --------------------------------------------------------------------------------------------
# PostgreSQL stops, then comes back


async def spectate(ws_url: str) -> dict | websockets.ConnectionClosed:
    """A spectator's first frame, or how its socket was closed."""
    async with websockets.connect(ws_url + "/spectate/ws?room=r1") as ws:
        try:
            return json.loads(await asyncio.wait_for(ws.recv(), 15))
        except websockets.ConnectionClosed as closed:
            return closed


def test_a_database_outage_is_a_503_with_retry_after_and_the_service_comes_back():
    postgres = KillablePostgres(dbname="parley")
    try:
        env: dict[str, str | None] = {
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "DATABASE_URL": postgres.url,
            "REDIS_URL": None,
            "PARLEY_DB_POOL_TIMEOUT_S": "2",
            "PARLEY_VAR_DIR": tempfile.mkdtemp(prefix="parley-errors-pg-"),
        }
        _run(env, sys.executable, "manage.py", "migrate", "--noinput", "-v0")
        worker = DaphneProcess(env=env, server=PARLEY_SERVER, name="parley-server-pg")
        try:
            paths = ["/api/streams", "/api/recordings", "/api/rooms/r1", "/api/rooms/r1/events"]
            with httpx.Client(base_url=worker.url, timeout=30) as http:
                for path in paths:
                    assert http.get(path).status_code == 200, path
                postgres.shut_down()
                during = [http.get(path) for path in paths]
                during.append(
                    http.post(
                        "/audio", json={"stream_id": "o1", "seq": 0, "data": "AAA=", "done": True}
                    )
                )
                # Views with their own catch-all answer the API layer's 503 too, not their 500.
                during += [http.get("/v1/voices"), http.get("/v1/status/progress")]
                during.append(http.post("/chat", json={"text": "hi", "user": "ann"}))
                during.append(http.post("/api/rooms/r1/say", json={"text": "hi", "speaker": "a"}))
                for response in during:
                    body = assert_json_error(response, 503, "unavailable")
                    assert response.headers["Retry-After"] == "5", body
                closed = asyncio.run(spectate(worker.ws_url))
                assert isinstance(closed, websockets.ConnectionClosed), closed
                assert closed.rcvd.code == 4503, closed
                assert closed.rcvd.reason.startswith("unavailable: "), closed
                postgres.restart()
                deadline = time.monotonic() + 30
                while http.get("/api/streams").status_code != 200:
                    assert time.monotonic() < deadline, "the service did not come back"
                    time.sleep(0.2)
                for path in paths:  # every later request is served, none hits a dead connection
                    for _ in range(5):
                        assert http.get(path).status_code == 200, path
                assert asyncio.run(spectate(worker.ws_url))["type"] == "state"
            assert " 500 " not in worker.log(), worker.log()[-3000:]
        finally:
            worker.stop()
    finally:
        postgres.stop()


# --------------------------------------------------------------------------------------------
# deploy checks


def test_check_deploy_is_clean_with_the_prod_settings():
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.prod",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "DJANGO_ALLOWED_HOSTS": "parley.example.com",
        "DJANGO_DEBUG": None,
        "PARLEY_HTTPS": None,  # on by default in prod
    }
    done = _run(env, sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert "System check identified no issues (0 silenced)." in done.stdout, (
        done.stdout + done.stderr
    )


def test_the_compose_file_names_its_hosts():
    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text())
    hosts = compose["x-parley"]["environment"]["DJANGO_ALLOWED_HOSTS"]
    assert "*" not in hosts.split(":-", 1)[-1], hosts


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/api/rooms/r1/floor", {"speaker": "a\u0000b"}, "speaker"),
        ("/api/rooms/r1/say", {"speaker": "npc", "text": "a\u0000b"}, "text"),
    ],
)
async def test_a_nul_in_a_json_text_is_invalid_that_field(path, body, field):
    async with asgi_client() as http:
        response = await http.post(path, json=body)
    assert_json_error(response, 400, f"invalid_{field}")
    assert response.json()["field"] == field
