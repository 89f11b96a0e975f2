"""Hostile WebSocket connections against a real daphne: server RSS and presence after N.

    python -m bench.fuzz_ws [--connections 10000] [--concurrency 16]

Starts its own server (this shell's leg: SQLite and the in-memory layer, or $DATABASE_URL's
PostgreSQL and $REDIS_URL), then opens N connections cycling through HOSTILE_CASES on the
spectator, recording and agent sockets (bad query strings, wrong JSON, huge numbers, invalid
UTF-8, binary, abrupt ends), and prints the server's RSS at the start (after a warm-up) and
at the end, the spectators still counted, and every connection that ended badly (a 5xx
handshake, a 1011 close, an unanswered frame). tests/fuzz/test_ws_fuzz.py runs ~1,000.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import psutil

from tests.support.rawws import CLOSE, HandshakeRefused, RawWebSocket

FUZZ_ROOMS = ("fuzz-a", "fuzz-b")
ANSWER_S = 5.0
HUGE = "9" * 5000


@dataclass(frozen=True)
class Outcome:
    case: str
    problem: str | None  # None: answered as the contract says


def _answered(ws: RawWebSocket, timeout: float = ANSWER_S) -> tuple[str, int | None]:
    """("frame", None) if a message came, ("close", code) if the server closed, ("drop",
    None) if the connection ended without a close frame."""
    try:
        opcode, payload = ws.recv_frame(timeout)
    except (ConnectionError, OSError) as exc:
        if isinstance(exc, TimeoutError):
            return "silent", None
        return "drop", None
    if opcode == CLOSE:
        return "close", int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
    return "frame", None


def _drain(ws: RawWebSocket, quiet_s: float = 0.1) -> tuple[str, int | None]:
    """Read what the server sends on its own (a greeting, a state) until it is quiet."""
    while True:
        kind, code = _answered(ws, quiet_s)
        if kind != "frame":
            return kind, code


def session(
    port: int,
    path: str,
    frames: list[tuple[str, bytes]],
    *,
    ending: str = "close",
    must_answer: Callable[[str], bool] = lambda kind: kind == "text",
) -> str | None:
    """One hostile connection. `frames` are (kind, payload) with kind "text", "binary",
    "badutf8" (a text frame of invalid UTF-8) or "quiet" (a text frame the protocol may
    leave unanswered, like a Socket.IO event to a namespace that refused the client).
    Returns a problem, or None if every frame that must be answered was answered by a
    frame or a close with a code (not 1011), and the handshake was not a 5xx."""
    try:
        ws = RawWebSocket(port, path, timeout=ANSWER_S)
    except HandshakeRefused as refused:
        return f"handshake {refused.status}" if refused.status >= 500 else None
    except (ConnectionError, OSError) as exc:
        return f"handshake failed: {exc!r}"
    try:
        kind, code = _drain(ws)
        if kind == "close":
            return "closed 1011" if code == 1011 else None
        if kind == "drop":
            return "dropped at connect"
        for frame_kind, payload in frames:
            try:
                if frame_kind == "binary":
                    ws.send_binary(payload)
                else:
                    ws.send_text(payload)
            except OSError:
                return None if frame_kind == "badutf8" else "send failed"
            answer, code = _answered(ws, ANSWER_S if must_answer(frame_kind) else 0.1)
            if answer == "close":
                return "closed 1011" if code == 1011 else None
            if answer == "drop":
                # daphne (autobahn) drops a connection whose text frame is not UTF-8.
                return None if frame_kind == "badutf8" else f"dropped after {frame_kind}"
            if answer == "silent" and must_answer(frame_kind):
                return f"no answer to a {frame_kind} frame {payload[:60]!r}"
            rest, code = _drain(ws, 0.05)
            if rest == "close":
                return "closed 1011" if code == 1011 else None
            if rest == "drop":
                return None if frame_kind == "badutf8" else f"dropped after {frame_kind}"
        return None
    finally:
        if ending == "reset":
            ws.reset()
        elif ending == "close":
            with contextlib.suppress(OSError):
                ws.send_close(1000)
            ws.close()
        else:
            ws.close()


def hostile_cases(api_key: str) -> list[tuple[str, str, list[tuple[str, bytes]]]]:
    """(name, path, frames) of a fixed set of hostile connections on the spectator,
    recording (plain and Socket.IO), agent and speech (text in, audio out) sockets."""
    junk_json = [b"[]", b"null", b"1e400", b'{"type": 5}', b'{"event": []}', HUGE.encode()]
    junk_json += [b'{"type": "session.update", "session": {"sample_rate_hz": ' + HUGE.encode()]
    junk_json += [b'{"event": "audio_chunk", "data": {"chunk": "x"}}', b"\x00", b"{"]
    frames_sets = [
        [("text", j) for j in junk_json[:4]],
        [("text", j) for j in junk_json[4:]],
        [("binary", b""), ("binary", b"\x00" * 3), ("text", b"{}")],
        [("badutf8", b"\xff\xfe\xfd")],
        [],
    ]
    queries = [
        "",
        "room=%00",
        f"room={'x' * 300}",
        f"after={HUGE}",
        "after=-1",
        "room=fuzz-a&after=1e3",
        "room=fuzz-b",
        f"sample_rate_hz={HUGE}",
        "channels=0&bytes_per_sample=9",
        "format=webm&room=fuzz-a",
        "api_key=%FF%FE",
    ]
    auths = [
        {"api_key": api_key},
        {"api_key": api_key, "sample_rate_hz": HUGE},
        {"sample_rate_hz": "abc", "api_key": 5},
        None,
        [],
    ]
    sio_events = [
        b'42/streaming,["audio_chunk",{"chunk":"x"}]',
        b'42/streaming,["nope",' + HUGE.encode() + b"]",
        b'42/streaming,["stop_recording"]',
        b'42/streaming,["audio_chunk",',
        b"4X",
    ]
    cases = []
    for n, (auth, event) in enumerate(itertools.product(auths, sio_events)):
        connect = b"40/streaming," + (b"" if auth is None else json.dumps(auth).encode())
        frames = [("text", connect), ("quiet", event), ("quiet", b"41/streaming,")]
        cases.append((f"socketio-{n}", "/socket.io/?EIO=4&transport=websocket", frames))
    for (n, query), frames in zip(enumerate(queries), itertools.cycle(frames_sets), strict=False):
        cases.append((f"spectate-{n}", f"/spectate/ws?{query}", frames))
        keyed = f"{query}&api_key={api_key}" if n % 2 else query
        cases.append((f"streaming-{n}", f"/ws/streaming?{keyed}", frames))
        cases.append((f"agent-{n}", f"/ws/agent?{keyed}", frames))
        cases.append((f"speechws-{n}", f"/v1/audio/speech/ws?{keyed}", frames))
    return cases


def must_answer(path: str) -> Callable[[str], bool]:
    """Which frames must be answered on `path`: text, and binary except on the agent's
    socket, which takes binary frames as audio (rightly unanswered)."""
    if path.startswith("/ws/agent"):
        return lambda kind: kind == "text"
    return lambda kind: kind in ("text", "binary")


def run_case(port: int, case: tuple[str, str, list[tuple[str, bytes]]], ending: str) -> Outcome:
    name, path, frames = case
    problem = session(port, path, frames, ending=ending, must_answer=must_answer(path))
    return Outcome(name, problem)


def spectators(base_url: str) -> int:
    total = 0
    for room in FUZZ_ROOMS:
        response = httpx.get(f"{base_url}/api/rooms/{room}", timeout=10)
        response.raise_for_status()
        total += response.json()["spectators"]
    return total


def wait_for_no_spectators(base_url: str, timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while (count := spectators(base_url)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return count


def hammer(port: int, api_key: str, connections: int, *, concurrency: int = 8) -> list[Outcome]:
    """`connections` hostile connections, `concurrency` at a time; returns the bad ones."""
    cases = hostile_cases(api_key)
    endings = ("close", "reset", "fin")
    jobs = [
        (cases[n % len(cases)], endings[(n // len(cases)) % len(endings)])
        for n in range(connections)
    ]
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(lambda job: run_case(port, *job), jobs))
    return [outcome for outcome in outcomes if outcome.problem is not None]


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


def main() -> None:
    from tests.support.parley_server import running_server

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with running_server() as server:
        port, pid = server.daphne.port, server.daphne.pid
        hammer(port, server.api_key, 300, concurrency=args.concurrency)  # warm-up
        start_rss = rss_mb(pid)
        started = time.monotonic()
        bad = hammer(port, server.api_key, args.connections, concurrency=args.concurrency)
        elapsed = time.monotonic() - started
        left = wait_for_no_spectators(server.url)
        end_rss = rss_mb(pid)
    print(
        json.dumps(
            {
                "connections": args.connections,
                "seconds": round(elapsed, 1),
                "rss_start_mb": round(start_rss, 1),
                "rss_end_mb": round(end_rss, 1),
                "spectators_left": left,
                "bad": [(o.case, o.problem) for o in bad[:20]],
                "bad_count": len(bad),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
