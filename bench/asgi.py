"""Bench-only ASGI app: the product's (config.asgi) plus a bare WebSocket echo.

The bench's daphne serves `bench.asgi:application`: every path but one goes to
`config.asgi.application` unchanged; `WS /bench/ws-echo` is the yardstick for WS /ws/audio
(issue 11 §2). The echo is served the way /ws/audio is: the same daphne, the same
`close_when_unavailable` guard and channels `URLRouter`, an `AsyncWebsocketConsumer` with
the same per-message dispatch as `ingest.consumers.IngestConsumer` (no hop to the sync thread
per message). It sends every frame back as it came: what is left is daphne, channels and the
socket, the cost no ingest can avoid. Never part of config/asgi.py.
"""

from __future__ import annotations

from typing import Any

from channels.consumer import get_handler_name
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import URLRouter
from django.urls import path

from config.asgi import application as product_application
from config.websocket import close_when_unavailable

ECHO_PATH = "/bench/ws-echo"


class EchoConsumer(AsyncWebsocketConsumer):
    """Accepts, says `ready` (as /ws/audio does), then sends every frame back as is."""

    async def dispatch(self, message: dict[str, Any]) -> None:
        # As IngestConsumer.dispatch: channels' default closes stale database connections
        # through the sync thread before every message; neither socket needs that.
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def connect(self) -> None:
        await self.accept()
        await self.send(text_data='{"type":"ready"}')

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send(text_data=text_data, bytes_data=bytes_data)


echo_application = close_when_unavailable(
    URLRouter([path(ECHO_PATH.lstrip("/"), EchoConsumer.as_asgi())])
)


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "websocket" and scope["path"] == ECHO_PATH:
        await echo_application(scope, receive, send)
    else:
        await product_application(scope, receive, send)
