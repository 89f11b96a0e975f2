"""WS /ws/audio: a thin adapter between a WebSocket and an IngestSession (ingest/session.py)."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from ingest.session import IngestSession


def _authorization(scope: dict[str, Any], query: dict[str, str]) -> str | None:
    """``?api_key=`` (browsers cannot set headers on a WebSocket) or the header."""
    if query.get("api_key"):
        return f"Bearer {query['api_key']}"
    for name, value in scope.get("headers") or []:
        if name.lower() == b"authorization":
            return value.decode("latin-1")
    return None


class IngestConsumer(AsyncWebsocketConsumer):
    session: IngestSession | None = None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # However the consumer ends (a client gone mid-send, daphne cancelling it).
            if self.session is not None:
                session, self.session = self.session, None
                await session.stop()

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale database connections before every message through a hop to
        # the sync thread; this socket's database work runs on the runtime's executor.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def send(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().send(*args, **kwargs)
        except Exception as exc:
            # "send on a closed protocol": the client left while its acks were being written.
            raise StopConsumer from exc

    async def connect(self) -> None:
        raw = self.scope.get("query_string", b"").decode("latin-1")
        query = dict(parse_qsl(raw, keep_blank_values=True))
        await self.accept()
        session = IngestSession(send_text=self._send_text, close=self._close)
        if await session.open(query, _authorization(self.scope, query)):
            self.session = session

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None:
            return
        if bytes_data is not None:
            await self.session.take_bytes(bytes_data)
        else:
            await self.session.take_text(text_data or "")

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.stop()

    async def _send_text(self, text: str) -> None:
        await self.send(text_data=text)

    async def _close(self, code: int, reason: str) -> None:
        await self.close(code=code, reason=reason)
