"""The answer of a WebSocket opened on a path no consumer serves.

Channels' URLRouter raises "No route found" for such a path: daphne then answers the upgrade
with an HTTP 500 and logs a traceback at ERROR level (a log flood anyone could cause). The
last route of config/asgi.py's router sends every other path here instead: the socket is
accepted and closed at once with code 4404 and a reason, like the other sockets' 44xx codes.
"""

from __future__ import annotations

from channels.generic.websocket import AsyncWebsocketConsumer

CLOSE_NOT_FOUND = 4404
# A close frame's reason is at most 123 bytes of UTF-8.
MAX_REASON_BYTES = 123


def not_found_reason(path: str) -> str:
    """`not_found: no WebSocket endpoint at <path>`, cut to fit a close frame."""
    reason = f"not_found: no WebSocket endpoint at {path}"
    return reason.encode()[:MAX_REASON_BYTES].decode(errors="ignore")


class NotFoundConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NOT_FOUND, reason=not_found_reason(self.scope["path"]))
