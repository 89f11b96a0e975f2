"""Socket.IO namespace /streaming: the seed's contract for unchanged Socket.IO clients.

A thin adapter: each connection gets a RecordingSession, and every event but connect and
disconnect is handed to it. Served by python-socketio's AsyncServer in ASGI mode, mounted
beside the Channels router in config/asgi.py (`/socket.io/` comes here).

Several workers: with REDIS_URL set the server uses python-socketio's Redis manager, so an
emit from any worker (force stop) reaches a client connected to another. Engine.IO's
long-polling transport sends each request of a session to whichever worker the load
balancer picks, so a multi-worker deployment needs clients on the websocket transport
(`transports=["websocket"]`) or sticky sessions (docs/recordings.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import socketio
from django.conf import settings

from recordings.models import Transport
from recordings.sessions import RecordingSession, scope_params
from recordings.sweeper import sweeper
from streams.errors import ApiError

logger = logging.getLogger(__name__)

NAMESPACE = "/streaming"
SOCKETIO_PATH = "socket.io"


# How far over PARLEY_MAX_CHUNK_BYTES a chunk may be and still reach our own check (and its
# clear `chunk_too_large`, the session going on) instead of engine.io's bare 400 and a
# dropped client.
OVERSIZE_FACTOR = 4


def max_message_bytes() -> int:
    """engine.io's max_http_buffer_size: one polling POST may hold a chunk of
    OVERSIZE_FACTOR x our limit, as base64 (4/3 the size: long-polling carries binary that
    way), plus room for the packet framing and a few small events batched with it. The
    websocket transport gets the same cap (config/server.py), so over either transport a
    chunk up to OVERSIZE_FACTOR x the limit is answered `chunk_too_large`."""
    return settings.PARLEY_MAX_CHUNK_BYTES * OVERSIZE_FACTOR * 4 // 3 + 64 * 1024


def _client_manager() -> socketio.AsyncManager | None:
    if not settings.REDIS_URL:
        return None  # one process: the in-memory manager
    prefix = os.environ.get("PARLEY_CHANNEL_PREFIX", "parley")
    return socketio.AsyncRedisManager(settings.REDIS_URL, channel=f"{prefix}.socketio")


def _cors_origins() -> str | list[str]:
    # The one CORS setting of every API surface (PARLEY_CORS_ORIGINS, docs/api.md "CORS"),
    # as django-cors-headers reads it for the HTTP API.
    if settings.CORS_ALLOW_ALL_ORIGINS:
        return "*"
    return list(settings.CORS_ALLOWED_ORIGINS)


class StreamingNamespace(socketio.AsyncNamespace):
    def __init__(self, namespace: str) -> None:
        super().__init__(namespace)
        self.sessions: dict[str, RecordingSession] = {}
        self.greetings: dict[str, asyncio.Task] = {}

    async def on_connect(self, sid: str, environ: dict, auth: Any = None) -> None:
        session = RecordingSession(
            sid=sid,
            transport=Transport.SOCKETIO,
            send=partial(self._emit, sid),
            close=partial(self.disconnect, sid),
        )
        scope = environ.get("asgi.scope", {})
        # The format may come in the handshake's auth (preferred) or its query string.
        params = {**scope_params(scope), **(auth if isinstance(auth, dict) else {})}
        try:
            payload = await session.open(scope=scope, params=params)
        except ApiError as exc:
            raise socketio.exceptions.ConnectionRefusedError(exc.detail, exc.as_dict()) from exc
        self.sessions[sid] = session
        self.greetings[sid] = asyncio.get_running_loop().create_task(self._greet(sid, payload))

    async def _greet(self, sid: str, payload: dict) -> None:
        # The server sends CONNECT after this handler returns; an event sent before it is
        # dropped by some clients, so `response` waits until the namespace is connected.
        for _ in range(200):
            if self.server.manager.is_connected(sid, NAMESPACE):
                break
            await asyncio.sleep(0.005)
        await self._emit(sid, "response", payload)
        self.greetings.pop(sid, None)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        session = self.sessions.pop(sid, None)
        if greeting := self.greetings.pop(sid, None):
            greeting.cancel()
        if session is not None:
            await session.disconnect()

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid, *data = args
        session = self.sessions.get(sid)
        if greeting := self.greetings.get(sid):
            await greeting  # "Connected to server" always comes first
        if session is not None:
            await session.handle(event, data[0] if data else None)
        return None

    async def _emit(self, sid: str, event: str, data: dict) -> None:
        # The client is on this worker: no need to go through the Redis manager's queue.
        await self.emit(event, data, to=sid, ignore_queue=True)


MALFORMED_PACKET = ApiError(
    "malformed_packet", "The Socket.IO packet could not be decoded; the connection is closed."
)


class _Server(socketio.AsyncServer):
    """python-socketio's server, except that a packet that does not decode is the client's
    fault: one WARNING line, an `error` event and a disconnect, not an ERROR traceback per
    packet (which anyone could send, unauthenticated) and a connection left hanging."""

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            # Our own handlers never raise (RecordingSession.handle answers every error):
            # what arrives here is socketio's packet decoding failing.
            logger.warning("Socket.IO: malformed packet dropped, client disconnected: %r", exc)
            self._binary_packet.pop(eio_sid, None)
            sid = self.manager.sid_from_eio_sid(eio_sid, NAMESPACE)
            if sid is not None:
                with contextlib.suppress(Exception):
                    await self.emit(
                        "error", MALFORMED_PACKET.as_dict(), to=sid, namespace=NAMESPACE
                    )
            with contextlib.suppress(Exception):
                await self.eio.disconnect(eio_sid)


sio = _Server(
    async_mode="asgi",
    client_manager=_client_manager(),
    # One event at a time per connection: chunks are stored and acknowledged in order.
    async_handlers=False,
    cors_allowed_origins=_cors_origins(),
    # Never `Access-Control-Allow-Credentials` (docs/api.md "CORS"): no cookie is read here,
    # and with PARLEY_CORS_ORIGINS="*" engineio echoes any page's origin, so allowing
    # credentials would hand every page a visitor's cookies for this origin.
    cors_credentials=False,
    max_http_buffer_size=max_message_bytes(),
    logger=False,
    engineio_logger=False,
)
sio.register_namespace(StreamingNamespace(NAMESPACE))


def mount(other_app: Any) -> Callable[..., Awaitable[None]]:
    """`/socket.io/` to the Socket.IO server, everything else to `other_app`; the first
    call of each event loop also starts the abandoned-recordings sweeper."""
    app = socketio.ASGIApp(sio, other_asgi_app=other_app, socketio_path=SOCKETIO_PATH)

    async def application(scope: dict, receive: Any, send: Any) -> None:
        sweeper.ensure_started()
        try:
            await app(scope, receive, send)
        except Exception as exc:
            if scope["type"] != "websocket" or not scope["path"].startswith(f"/{SOCKETIO_PATH}"):
                raise
            # Engine.IO frames that do not decode (an empty or unknown packet) end the
            # connection inside python-engineio: close it with a code, log one line.
            logger.warning("Engine.IO: malformed packet, connection closed: %r", exc)
            with contextlib.suppress(Exception):
                await send({"type": "websocket.close", "code": 1002, "reason": "malformed_packet"})

    return application
