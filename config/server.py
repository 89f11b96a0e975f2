"""`python -m config.server`: daphne with the limits a server facing clients needs.

Same command line as `daphne` (`-b`, `-p`, `--fd`, ..., the application last), plus:

- `--header-timeout` (PARLEY_HEADER_TIMEOUT_S, 10 s): the request line and headers must all
  arrive within this of the request's first byte, or the connection gets a 408 and is
  closed. (A kept-alive connection waiting for its next request gets no 408: the idle
  timeout closes it silently, so a client never reads a 408 it did not ask for.) Twisted
  has no such limit, and its idle timeout is reset by every byte: a client sending one
  header byte every few seconds held a worker's connection for as long as it liked (400
  such connections held 60 s).
- `--idle-timeout` (PARLEY_IDLE_TIMEOUT_S, 20 s): a connection that sends nothing this long
  while its request (headers or body) is unfinished, or between kept-alive requests, is
  closed. Twisted's default is 12 hours. It is off while the application handles a request
  (long-polls, streamed answers) and on upgraded WebSockets, which daphne's ping
  (`--ping-interval` 20 s, `--ping-timeout` 30 s) watches instead.
- Bodies over PARLEY_MAX_UPLOAD_BYTES (multipart) or DATA_UPLOAD_MAX_MEMORY_SIZE (the rest)
  are refused with 413 from their Content-Length (or once a chunked body passes it), before
  Twisted buffers them: the application's own check (config/handlers.py) only runs once the
  whole body has arrived.

And daphne's own bare answers become the API's JSON error shape: Twisted's empty
`400 Bad Request` without a Content-Type (malformed request line, headers, chunked coding),
and daphne's HTML error pages (500, 503, 400). Twisted no longer parses multipart bodies of
POSTs either: daphne never uses that parse, which cost a copy of every upload on the reactor
thread and answered a malformed one (no boundary, garbage) with the empty 400 itself.

WebSockets: the cap on a client's message (`--websocket-max-message-size`, 1 MiB) is not
applied to what the application sends (autobahn applies it both ways: a legal 1 MiB chunk's
1.4 MB `audio_chunk` event never reached a spectator); and a client's protocol error (a text
frame of invalid UTF-8, a message over the cap) is answered with a close frame and its code
(1007, 1009, 1002), not a dropped TCP connection. Socket.IO's path takes the messages its
long-polling transport takes (4x PARLEY_MAX_CHUNK_BYTES as base64), so an oversized chunk
gets `chunk_too_large` over either transport, not a 1009.

daphne also drops the reason of an application's `websocket.close`: here it reaches the client
with the code (`4404 not_found: ...`, `4400 invalid room`, ...).

One fast path for fan-out (issue 11 §1): a WebSocket's scope carries the extension
`"parley.frames": {"write": callable(frame) -> int}`. `write` takes one complete, unmasked
server frame built once for every socket it goes to (spectate/hub.py builds a room event's
text frame once per process) and writes it to this socket as is: no ASGI message, no
coroutine, no per-socket UTF-8 encoding or framing, and a send() straight to the socket when
nothing is waiting in Twisted's buffer (which otherwise costs an epoll registration, a wake-up
and an unregistration per frame). It returns the bytes still waiting in Twisted's buffer after
the write (the caller's bound on a slow client), or -1 if the socket is not open (nothing
written). An application that does not look for the extension is served as before.

`--http-timeout` stays unset: daphne would cut streamed answers (speech, /audio/stream) at
it. `--websocket_connect_timeout` (handshake) defaults to 10 s here instead of 5.

Memory diagnosis, off by default: with PARLEY_MEMORY_DUMP=<dir>, SIGUSR2 makes the process
run a full collection and write `<dir>/<pid>-<n>.json` (RSS, tracemalloc's current/peak,
glibc's and pymalloc's totals, live objects by type) and, when tracemalloc traces, the
snapshot as `<dir>/<pid>-<n>.tracemalloc`. PARLEY_TRACEMALLOC_FRAMES=<n> starts tracing
(n frames a traceback) at the first SIGUSR2: a worker tracing from its start
(PYTHONTRACEMALLOC) took over 5 minutes to serve its first request on a loaded machine.
bench/soak.py uses it (`--memory-dump`); docs/benchmarks.md "Soak" has what it found.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import gc
import itertools
import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from daphne.cli import CommandLineInterface
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from twisted.internet import tcp
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol

HEADER_TIMEOUT_S = float(os.environ.get("PARLEY_HEADER_TIMEOUT_S", 10))
IDLE_TIMEOUT_S = float(os.environ.get("PARLEY_IDLE_TIMEOUT_S", 20))
WEBSOCKET_CONNECT_TIMEOUT_S = 10
# How long a client has to read up to a close frame sent behind unsent data, then reply.
CLOSE_BEHIND_DATA_S = 10.0

_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 413: b"Content Too Large"}
_CODES = {400: "bad_request", 408: "request_timeout", 413: "body_too_large"}
_CODES.update({500: "server_error", 503: "unavailable"})


def error_json(status: int, detail: str) -> bytes:
    """The API's error body for a refusal decided by the server, not a view."""
    code = _CODES.get(status, "error")
    return json.dumps({"error": code, "detail": detail, "field": None}).encode()


def body_cap(content_type: bytes | None, path: bytes = b"") -> int | None:
    """The largest body the application accepts for this media type at this path (None: no
    cap known)."""
    try:
        from config.handlers import body_limit
    except Exception:  # another application than Parley's
        return None
    return body_limit((content_type or b"").decode("latin-1"), path.decode("latin-1"))


class ParleyHTTPChannel(HTTPChannel):
    """Twisted's HTTP/1.1 channel with a header deadline, a body cap and JSON refusals."""

    _header_deadline: Any = None
    _awaiting_request = True  # no byte of the next request yet

    def dataReceived(self, data: bytes) -> None:
        if self._awaiting_request and data:
            self._awaiting_request = False
            self._arm_header_deadline()
        super().dataReceived(data)

    def allHeadersReceived(self) -> None:
        self._cancel_header_deadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        self._awaiting_request = True

    def connectionLost(self, reason: Any) -> None:
        self._cancel_header_deadline()
        super().connectionLost(reason)

    def _arm_header_deadline(self) -> None:
        self._cancel_header_deadline()
        timeout = getattr(self.factory, "header_timeout", None)
        if timeout:
            self._header_deadline = self.callLater(timeout, self._headers_too_slow)

    def _cancel_header_deadline(self) -> None:
        if self._header_deadline is not None and self._header_deadline.active():
            self._header_deadline.cancel()
        self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self._handlingRequest and self.transport is not None:
            self.refuse(408, "The request's headers did not arrive in time.")

    def refuse(self, status: int, detail: str) -> None:
        """Answer `status` with the JSON error shape and close the connection."""
        body = error_json(status, detail)
        head = (
            b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, _REASONS.get(status, b"Error"), len(body))
        )
        self.transport.write(head + body)
        self.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted's bare "HTTP/1.1 400 Bad Request\r\n\r\n", with a body a client can read.
        self.refuse(400, "The request is not valid HTTP/1.1.")


class ParleyWebRequest(WebRequest):
    """daphne's request: no multipart parse by Twisted, a body cap, JSON error pages."""

    _refused = False
    _received = 0
    _cap: int | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parsePOSTFormSubmission = False  # Twisted sets it per instance

    def gotLength(self, length: int | None) -> None:
        # The request line is parsed (the channel keeps its path); the request's own .path
        # is only set once the body has arrived.
        path = getattr(self.channel, "_path", b"") or b""
        self._cap = body_cap(
            self.requestHeaders.getRawHeaders(b"content-type", [None])[0], path.split(b"?")[0]
        )
        if length is not None and self._cap is not None and length > self._cap:
            self._refuse_body(length)
            length = 0  # nothing of it is kept
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._cap is not None and self._received > self._cap:
            self._refuse_body(None)
            return
        super().handleContentChunk(data)

    def _refuse_body(self, length: int | None) -> None:
        self._refused = True
        size = f"{length} bytes" if length is not None else f"over {self._cap} bytes"
        self.channel.refuse(
            413, f"The request body is {size}; the largest accepted is {self._cap} bytes."
        )

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)

    def basic_error(self, status: int, status_text: bytes, body: str) -> None:
        self.handle_reply(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"Content-Type", b"application/json")],
            }
        )
        self.handle_reply({"type": "http.response.body", "body": error_json(status, body)})


class ParleyWebSocketProtocol(WebSocketProtocol):
    """daphne's WebSocket protocol, sending the close reason the application gave, and any
    message the application sends, whatever daphne's cap on what clients send."""

    def onConnect(self, request: Any) -> Any:
        if request.path.startswith("/socket.io/"):
            # A Socket.IO chunk a little over PARLEY_MAX_CHUNK_BYTES is one binary frame a
            # little over daphne's 1 MiB cap, which closed the socket with 1009 before our
            # check could answer `chunk_too_large` and let the session go on. The recording
            # endpoint's cap is engine.io's long-polling buffer (recordings/sio.py), so both
            # transports refuse the same sizes the same way; every other path keeps 1 MiB.
            from recordings.sio import max_message_bytes

            cap = max(self.maxMessagePayloadSize, max_message_bytes())
            self.maxMessagePayloadSize = self.maxFramePayloadSize = cap
        elif request.path == "/ws/audio":
            # POST /audio's largest chunk as a JSON frame: its base64 and the other fields.
            from django.conf import settings

            cap = max(self.maxMessagePayloadSize, settings.PARLEY_MAX_CHUNK_BYTES * 4 // 3 + 65536)
            self.maxMessagePayloadSize = self.maxFramePayloadSize = cap
        return super().onConnect(request)

    def sendMessage(self, payload: bytes, *args: Any, **kwargs: Any) -> None:
        # autobahn checks what the server sends against maxMessagePayloadSize too, the cap
        # on what a client may send (--websocket-max-message-size, 1 MiB): a legal 1 MiB
        # chunk's audio_chunk event (1.4 MB of base64 and JSON) was refused, and the
        # spectator silently got nothing more. What the application sends is sized by the
        # request caps that made it (docs/api.md), so no cap applies to it here. The reactor
        # runs one call at a time: no incoming frame is checked while the cap is lifted.
        cap = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            super().sendMessage(payload, *args, **kwargs)
        finally:
            self.maxMessagePayloadSize = cap

    def write_frame(self, frame: bytes) -> int:
        """Write a pre-built server frame as is (the "parley.frames" extension, see the module
        docstring); the bytes left in Twisted's buffer, or -1 when the socket is not open."""
        if self.state != self.STATE_OPEN:
            return -1
        transport = self.transport
        if type(transport) is not tcp.Server or self.send_queue:
            # TLS or another transport, or autobahn's own queue in use: its ordinary path.
            self.sendData(frame)
            return 0
        waiting = self._waiting_bytes()
        if waiting or not transport.connected or transport.disconnecting:
            transport.write(frame)  # behind what waits (a no-op once disconnected)
            return waiting + len(frame)
        try:
            sent = transport.socket.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            # Twisted's own write meets the same error and loses the connection its way.
            transport.write(frame)
            return 0
        if sent < len(frame):
            transport.write(frame[sent:])
        return len(frame) - sent

    def _waiting_bytes(self) -> int:
        """Bytes in Twisted's write buffer (0 for another transport than TCP)."""
        transport = self.transport
        if type(transport) is not tcp.Server:
            return 0
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def handle_reply(self, message: dict[str, Any]) -> None:
        if message.get("type") == "websocket.close" and self.state != self.STATE_CONNECTING:
            if self._waiting_bytes():
                # The close frame queues behind what the client has not read yet (a spectator
                # dropped as too slow): give it time to read up to the code before the drop.
                self.closeHandshakeTimeout = max(self.closeHandshakeTimeout, CLOSE_BEHIND_DATA_S)
            reason = message.get("reason") or None
            self.sendClose(code=message.get("code") or 1000, reason=reason)
            return
        super().handle_reply(message)


class ParleyHTTPFactory(HTTPFactory):
    def __init__(self, server: Server, *, header_timeout: float, idle_timeout: float) -> None:
        super().__init__(server)
        self.header_timeout = header_timeout or None
        self.timeOut = idle_timeout or None  # Twisted's idle timeout, copied to each channel

    def protocol(self) -> _GenericHTTPChannelProtocol:
        return _GenericHTTPChannelProtocol(ParleyHTTPChannel())

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = ParleyWebRequest
        return protocol


class ParleyServer(Server):
    """daphne's Server with ParleyHTTPFactory and ParleyWebSocketProtocol in place of its own."""

    def __init__(self, *args: Any, header_timeout: float, idle_timeout: float, **kwargs: Any):
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        super().__init__(*args, **kwargs)

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        if isinstance(protocol, ParleyWebSocketProtocol):
            extensions = {**scope.get("extensions", {}), "parley.frames": {}}
            extensions["parley.frames"]["write"] = protocol.write_frame
            scope = {**scope, "extensions": extensions}
        return super().create_application(protocol, scope)

    # Server.run() builds `self.http_factory = HTTPFactory(self)` and listens with it at once;
    # a property is the one seam to hand it ours instead without copying run().
    @property
    def http_factory(self) -> HTTPFactory:
        return self._http_factory

    @http_factory.setter
    def http_factory(self, factory: HTTPFactory) -> None:
        if type(factory) is HTTPFactory:
            factory = ParleyHTTPFactory(
                self, header_timeout=self.header_timeout, idle_timeout=self.idle_timeout
            )
        self._http_factory = factory

    @property
    def ws_factory(self) -> WebSocketFactory:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: WebSocketFactory) -> None:
        factory.protocol = ParleyWebSocketProtocol
        # A client's protocol error (a text frame of invalid UTF-8, a frame over the cap)
        # gets a close frame with its code (1007, 1009, 1002) instead of a dropped TCP
        # connection the client cannot tell from a network fault.
        factory.setProtocolOptions(failByDrop=False)
        self._ws_factory = factory


class ParleyCommandLine(CommandLineInterface):
    def __init__(self) -> None:
        super().__init__()
        self.parser.add_argument(
            "--header-timeout",
            type=float,
            default=HEADER_TIMEOUT_S,
            help="Seconds the request line and headers may take (0: no limit)",
        )
        self.parser.add_argument(
            "--idle-timeout",
            type=float,
            default=IDLE_TIMEOUT_S,
            help="Seconds a connection may send nothing while its request is unfinished "
            "or between requests (0: no limit)",
        )
        self.parser.set_defaults(websocket_connect_timeout=WEBSOCKET_CONNECT_TIMEOUT_S)

    def run(self, args: list[str]) -> None:
        parsed = self.parser.parse_args(args)
        self.server_class = functools.partial(
            ParleyServer, header_timeout=parsed.header_timeout, idle_timeout=parsed.idle_timeout
        )
        super().run(args)


_MALLINFO2_FIELDS = (
    "arena",  # bytes obtained from the OS with brk/sbrk (main arena) and arena heaps
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",  # bytes in blocks mmapped on their own (large allocations)
    "usmblks",
    "fsmblks",
    "uordblks",  # bytes in use
    "fordblks",  # bytes free but kept by malloc
    "keepcost",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2_FIELDS]


def _mallinfo2() -> dict[str, int] | None:
    """glibc's heap totals over every arena, in bytes (None off glibc or before 2.33)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {name: int(getattr(info, name)) for name in _MALLINFO2_FIELDS}


def _pymalloc_stats() -> dict[str, int]:
    """pymalloc's totals from sys._debugmallocstats() (which only writes to the C stderr):
    arenas current / highwater, bytes in allocated and available blocks, unused pools.
    Empty while tracemalloc traces: Python reports pymalloc only while it is the allocator."""
    import tempfile

    found: dict[str, int] = {}
    with tempfile.TemporaryFile("w+") as fh:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(fh.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        fh.seek(0)
        for line in fh:
            if line.startswith("# ") and "=" in line:
                key, _, value = line[2:].partition("=")
                found[key.strip()] = int(value.strip().replace(",", ""))
            elif "unused pools *" in line:
                found["unused pools"] = int(line.split()[0])
    return found


def _proc_status_kib() -> dict[str, int]:
    found: dict[str, int] = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads"):
                found[key] = int(value.split()[0])
    return found


def dump_memory(directory: Path, n: int) -> Path:
    """Write this process's memory state as `<directory>/<pid>-<n>.json`; return its path.

    Runs a full collection first (its count is `gc_collected`), so what is left is
    reachable. Shape: {"pid", "time", "gc_collected", "proc_kib": {VmRSS, VmHWM, RssAnon,
    ...}, "tracemalloc": {"current", "peak"} bytes or None, "mallinfo2": {...} bytes or
    None, "pymalloc_blocks", "pymalloc": {arenas, blocks, pools}, "objects", "frozen",
    "by_type": {type name: count} (top 60)}. With tracemalloc tracing, the snapshot goes
    beside it as `<pid>-<n>.tracemalloc`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    stem = directory / f"{os.getpid()}-{n}"
    collected = gc.collect()
    objects = gc.get_objects()
    by_type = collections.Counter(type(o).__qualname__ for o in objects)
    traced = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else None
    state = {
        "pid": os.getpid(),
        "time": time.time(),
        "gc_collected": collected,
        "proc_kib": _proc_status_kib(),
        "tracemalloc": {"current": traced[0], "peak": traced[1]} if traced else None,
        "mallinfo2": _mallinfo2(),
        "pymalloc_blocks": sys.getallocatedblocks(),
        "pymalloc": _pymalloc_stats(),
        "objects": len(objects),  # gc-tracked, not counting those config/asgi.py froze
        "frozen": gc.get_freeze_count(),
        "by_type": dict(by_type.most_common(60)),
    }
    del objects
    if tracemalloc.is_tracing():
        tracemalloc.take_snapshot().dump(f"{stem}.tracemalloc")
    path = Path(f"{stem}.json")
    path.write_text(json.dumps(state, indent=1))
    return path


def install_memory_dump() -> None:
    """SIGUSR2 → dump_memory(), when PARLEY_MEMORY_DUMP names a directory (else nothing);
    the first one starts tracemalloc with PARLEY_TRACEMALLOC_FRAMES frames if set."""
    directory = os.environ.get("PARLEY_MEMORY_DUMP")
    if not directory:
        return
    frames = int(os.environ.get("PARLEY_TRACEMALLOC_FRAMES") or 0)
    counter = itertools.count(1)

    def on_signal(*_: object) -> None:
        dump_memory(Path(directory), next(counter))
        if frames and not tracemalloc.is_tracing():
            tracemalloc.start(frames)

    # A Python signal handler runs on the main thread, the reactor's, between two callbacks.
    signal.signal(signal.SIGUSR2, on_signal)


def main() -> None:
    install_memory_dump()
    ParleyCommandLine().run(sys.argv[1:])


if __name__ == "__main__":
    main()
