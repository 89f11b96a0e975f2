"""Plain WebSocket /ws/streaming: the seed's events for clients without Socket.IO.

Text frames carry JSON `{"event": ..., "data": ...}` both ways; audio goes up as binary
frames (each one an `audio_chunk`). The format is declared in the query string. A thin
adapter over RecordingSession, like the Socket.IO namespace.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer

from recordings.models import Transport
from recordings.sessions import RECEIVED, RecordingSession, scope_params
from streams.errors import ApiError

CLOSE_REFUSED = 4400
RECEIVED_TEXT = json.dumps({"event": "response", "data": RECEIVED})
MALFORMED = ApiError(
    "malformed_message",
    'Text frames must be JSON {"event": ..., "data": ...}; audio goes in binary frames.',
)
JSON_CHUNK = ApiError(
    "invalid_chunk",
    "On /ws/streaming a chunk is a binary frame; JSON cannot carry its bytes.",
    field="chunk",
)


def new_sid() -> str:
    """A Socket.IO-like session id (20 URL-safe characters)."""
    return secrets.token_urlsafe(15)


class StreamingConsumer(AsyncWebsocketConsumer):
    session: RecordingSession | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' AsyncConsumer.__call__, with the client's messages read in a plain loop.

        Channels waits on the client and the channel layer together for every message (a
        new task and an asyncio.wait each time: at a live recorder's 50 chunks/s, a
        visible share of the socket's cost, bench/recordings.py). The client is read here;
        the layer (a force stop on another worker) by a task of its own.
        """
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.base_send = send
        listener = None
        try:
            if self.channel_layer is not None:
                self.channel_name = await self.channel_layer.new_channel()
                listener = asyncio.get_running_loop().create_task(self._listen_layer())
            while True:
                await self.dispatch(await receive())
        except StopConsumer:
            pass
        finally:
            if listener is not None:
                listener.cancel()
            # However the consumer ends (a send to a client that closed meanwhile, daphne
            # cancelling it), the session is saved like on a disconnect.
            await self.disconnect(1006)

    async def _listen_layer(self) -> None:
        assert self.channel_layer is not None
        try:
            while True:
                await self.dispatch(await self.channel_layer.receive(self.channel_name))
        except StopConsumer:
            pass

    async def send(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().send(*args, **kwargs)
        except Exception as exc:
            # daphne raises "send on a closed protocol" for a client that closed while
            # frames were being written to it: the socket is gone, so is this consumer.
            raise StopConsumer from exc

    async def connect(self) -> None:
        await self.accept()
        session = RecordingSession(
            sid=new_sid(),
            transport=Transport.WEBSOCKET,
            send=self.send_event,
            close=self.close,
            channel_name=self.channel_name or "",
        )
        try:
            payload = await session.open(scope=self.scope, params=scope_params(self.scope))
        except ApiError as exc:
            await self.send_event("error", exc.as_dict())
            await self.close(code=CLOSE_REFUSED, reason=exc.code)
            return
        self.session = session
        await self.send_event("response", payload)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every message, through a hop to
        # the sync thread: at 50 chunks/s a session that is most of its CPU. Our database
        # work runs on the runtime's executor, which does that after each call itself.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.disconnect()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None:
            return
        if bytes_data is not None:
            await self.session.handle("audio_chunk", {"chunk": bytes_data})
            return
        try:
            message = json.loads(text_data or "")
        except ValueError:
            message = None
        if not isinstance(message, dict) or not isinstance(message.get("event"), str):
            await self.send_event("error", MALFORMED.as_dict())
        elif message["event"] == "audio_chunk":
            await self.send_event("error", JSON_CHUNK.as_dict())
        else:
            await self.session.handle(message["event"], message.get("data"))

    async def send_event(self, event: str, data: dict[str, Any]) -> None:
        # The acknowledgement is always the same text: encoded once.
        text = RECEIVED_TEXT if data is RECEIVED else json.dumps({"event": event, "data": data})
        await self.send(text_data=text)

    async def recording_stopped(self, message: dict[str, Any]) -> None:
        """Another worker force-stopped this session: tell the client where its file is."""
        await self.send_event("result_file_path", message["payload"])
        if self.session is not None:
            await self.session.stopped_elsewhere()
