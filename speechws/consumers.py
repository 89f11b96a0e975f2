"""WS /v1/audio/speech/ws: a thin adapter between a WebSocket and a SpeechSocket session."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qsl

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from speechws.session import SocketGone, SpeechSocket

# Sessions stopping after their consumer was cancelled, kept referenced until done.
_stopping: set[asyncio.Task] = set()


def _authorization(scope: dict[str, Any], query: dict[str, str]) -> str | None:
    """``?api_key=`` (browsers cannot set headers on a WebSocket) or the header."""
    if query.get("api_key"):
        return f"Bearer {query['api_key']}"
    for name, value in scope.get("headers") or []:
        if name.lower() == b"authorization":
            return value.decode("latin-1")
    return None


class SpeechSocketConsumer(AsyncWebsocketConsumer):
    session: SpeechSocket | None = None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # daphne cancels an application slow to finish after a disconnect: disconnect()
            # never runs then, but synthesis must stop.
            if self.session is not None:
                session, self.session = self.session, None
                task = asyncio.ensure_future(session.stop())
                _stopping.add(task)
                task.add_done_callback(_stopping.discard)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every message through a hop to
        # the sync thread; this socket's database work runs on the runtime's executor.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        raw = self.scope.get("query_string", b"").decode("latin-1")
        query = dict(parse_qsl(raw, keep_blank_values=True))
        await self.accept()
        session = SpeechSocket(
            send_text=self._send_text, send_bytes=self._send_bytes, close=self._close
        )
        try:
            started = await session.start(
                query=query, authorization=_authorization(self.scope, query)
            )
        except SocketGone:
            raise StopConsumer from None
        if started:
            self.session = session

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None:
            return
        try:
            if bytes_data is not None:
                await self.session.receive_bytes(bytes_data)
            elif text_data is not None:
                await self.session.receive_text(text_data)
        except SocketGone:
            raise StopConsumer from None

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.stop()

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def _send_bytes(self, data: bytes) -> None:
        await self.send(bytes_data=data)

    async def _close(self, code: int, reason: str) -> None:
        await self.close(code=code, reason=reason)
