"""The floor for bench/recordings.py: the same two protocols, with no work behind them.

`daphne bench.recordings_bare:app` serves
- Socket.IO /streaming (python-socketio, configured as recordings/sio.py is): `audio_chunk`
  appends the chunk to a list and answers `response` {"message": "received chunk"};
- a raw ASGI WebSocket at /ws/streaming: each binary frame is appended and answered the same.
No Django, no database: what is left is the library and the server, the cost we cannot avoid.
"""

from __future__ import annotations

import json
from typing import Any

import socketio

RECEIVED = {"message": "received chunk"}
RECEIVED_TEXT = json.dumps({"event": "response", "data": RECEIVED})
chunks: list[bytes] = []

sio = socketio.AsyncServer(
    async_mode="asgi",
    async_handlers=False,
    cors_allowed_origins="*",
    max_http_buffer_size=2 * 1024 * 1024,
)


@sio.on("connect", namespace="/streaming")
async def connect(sid: str, environ: dict, auth: Any = None) -> None:
    await sio.emit("response", {"message": "Connected to server"}, to=sid, namespace="/streaming")


@sio.on("audio_chunk", namespace="/streaming")
async def audio_chunk(sid: str, data: dict) -> None:
    chunks.append(data["chunk"])
    await sio.emit("response", RECEIVED, to=sid, namespace="/streaming")


async def raw_websocket(scope: dict, receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"bare"})
        return
    while True:
        message = await receive()
        if message["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
            hello = {"event": "response", "data": {"message": "Connected to server"}}
            await send({"type": "websocket.send", "text": json.dumps(hello)})
        elif message["type"] == "websocket.receive":
            if message.get("bytes") is not None:
                chunks.append(message["bytes"])
            await send({"type": "websocket.send", "text": RECEIVED_TEXT})
        else:
            return


app = socketio.ASGIApp(sio, other_asgi_app=raw_websocket)
