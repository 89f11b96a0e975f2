from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from channels.testing import WebsocketCommunicator

from config.asgi import application


@pytest.fixture(autouse=True)
def recordings_dir(settings, tmp_path: Path) -> Iterator[Path]:
    settings.PARLEY_RECORDINGS_DIR = tmp_path / "recordings"
    yield settings.PARLEY_RECORDINGS_DIR


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


class Ws:
    """A /ws/streaming client inside the test's event loop."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator

    async def next(self, timeout: float = 5.0) -> tuple[str, Any]:
        message = await self.communicator.receive_json_from(timeout=timeout)
        return message["event"], message["data"]

    async def chunk(self, data: bytes) -> tuple[str, Any]:
        # send_to() refuses an empty frame; a real client can send one.
        await self.communicator.send_input({"type": "websocket.receive", "bytes": data})
        return await self.next()

    async def send(self, event: str, data: Any = None) -> tuple[str, Any]:
        await self.communicator.send_to(text_data=json.dumps({"event": event, "data": data}))
        return await self.next()

    async def closed_with(self, timeout: float = 5.0) -> int:
        output = await self.communicator.receive_output(timeout=timeout)
        assert output["type"] == "websocket.close", output
        return output.get("code", 1000)

    async def disconnect(self) -> None:
        await self.communicator.disconnect()


async def ws_connect(query: str = "", headers: list | None = None) -> tuple[Ws, str, Any]:
    communicator = WebsocketCommunicator(
        application, f"/ws/streaming?{query}", headers=headers or [(b"host", b"t")]
    )
    connected, _ = await communicator.connect()
    assert connected
    ws = Ws(communicator)
    event, data = await ws.next()
    return ws, event, data


async def ws_open(query: str = "") -> tuple[Ws, dict]:
    ws, event, data = await ws_connect(query)
    assert event == "response", data
    return ws, data
