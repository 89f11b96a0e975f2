"""WebSocket answers the API layer gives for every socket path.

A path no consumer serves: channels' URLRouter raises "No route found", daphne then answers
the upgrade with an HTTP 500 and logs a traceback at ERROR level (a log flood anyone could
cause). The last route of config/asgi.py's router sends every other path here instead: the
socket is accepted and closed at once with code 4404 and a reason, like the other sockets'
44xx codes.

The database unreachable (`config.errors.database_unavailable`) while a consumer connects or
runs: `close_when_unavailable` closes the socket with 4503 and a reason telling the client to
come back later (the WebSocket twin of the HTTP API's 503 + Retry-After), where daphne would
answer the handshake with a 500 or close with a bare 1011, and log an ERROR traceback.
"""

from __future__ import annotations

import logging
from typing import Any

from channels.generic.websocket import AsyncWebsocketConsumer

from config.errors import RETRY_AFTER_S, database_unavailable

logger = logging.getLogger(__name__)

CLOSE_NOT_FOUND = 4404
CLOSE_UNAVAILABLE = 4503
UNAVAILABLE_REASON = f"unavailable: the database is unavailable; retry in {RETRY_AFTER_S} s"
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


def close_when_unavailable(app: Any) -> Any:
    """ASGI middleware for WebSocket apps: a database outage closes the socket with 4503."""

    async def guarded(scope: dict[str, Any], receive: Any, send: Any) -> None:
        state = {"accepted": False, "closed": False}

        async def tracked_send(message: dict[str, Any]) -> None:
            if message["type"] == "websocket.accept":
                state["accepted"] = True
            elif message["type"] == "websocket.close":
                state["closed"] = True
            await send(message)

        try:
            await app(scope, receive, tracked_send)
        except Exception as exc:
            if not database_unavailable(exc) or state["closed"]:
                raise
            logger.warning("WebSocket %s: database unavailable: %s", scope.get("path"), exc)
            if not state["accepted"]:  # a close before accept would be a bare HTTP 403
                await send({"type": "websocket.accept"})
            await send(
                {"type": "websocket.close", "code": CLOSE_UNAVAILABLE, "reason": UNAVAILABLE_REASON}
            )

    return guarded
