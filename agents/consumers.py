"""WS /ws/agent: a thin adapter between a WebSocket and an AgentSession (agents/pipeline.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from agents.pipeline import AgentSession
from streams.services import ROOM_NAME_RE

CLOSE_BAD_REQUEST = 4400


# Sessions closing after their consumer was cancelled, kept referenced until done.
_closing: set[asyncio.Task] = set()


class AgentConsumer(AsyncWebsocketConsumer):
    session: AgentSession | None = None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # daphne cancels an application that is slow to finish after a disconnect (a
            # backlog of frames): disconnect() never runs then, but the session must end.
            if self.session is not None:
                session, self.session = self.session, None
                task = asyncio.ensure_future(session.close("disconnect"))
                _closing.add(task)
                task.add_done_callback(_closing.discard)

    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode("latin-1"))
        room = (query.get("room") or [None])[0] or None
        await self.accept()
        if room is not None and not ROOM_NAME_RE.fullmatch(room):
            await self._send(
                {
                    "type": "error",
                    "code": "invalid_room",
                    "detail": (
                        "room must be 1-64 characters of letters, digits, '.', '_' or '-', "
                        "not only dots."
                    ),
                    "field": "room",
                }
            )
            await self.close(code=CLOSE_BAD_REQUEST, reason="invalid room")
            return
        headers = dict(self.scope.get("headers") or [])
        client = self.scope.get("client") or ["", 0]
        info = {
            "address": client[0] if client else "",
            "user_agent": headers.get(b"user-agent", b"").decode("latin-1")[:255],
            "origin": headers.get(b"origin", b"").decode("latin-1")[:255],
        }
        session = AgentSession(send=self._send, close=self._close, room=room, client_info=info)
        if await session.start():
            self.session = session

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session is None:
            return
        if bytes_data is not None:
            await self.session.receive_bytes(bytes_data)
        elif text_data is not None:
            await self.session.receive_text(text_data)

    async def disconnect(self, code: int) -> None:
        if self.session is not None:
            session, self.session = self.session, None
            await session.close("disconnect")

    async def send(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().send(*args, **kwargs)
        except Exception as exc:
            # daphne raises "send on a closed protocol" for a client that closed while
            # frames were being written to it: the socket is gone, so is this consumer
            # (__call__ ends its session).
            raise StopConsumer from exc

    async def _send(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(frame, separators=(",", ":")))

    async def _close(self, code: int, reason: str) -> None:
        await self.close(code=code, reason=reason)
