"""A WS /v1/audio/speech/ws client over channels' WebsocketCommunicator (in the test's loop),
and a real daphne for the tests that need a real socket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator

from tests.support.servers import PROJECT_ROOT, DaphneProcess

PATH = "/v1/audio/speech/ws"


class SpeechWs:
    """Keeps every message received: JSON frames as dicts, binary frames as
    ``{"type": "<bytes>", "data": b"..."}``, the close as ``{"type": "<close>", "code"}``."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.ws = communicator
        self.messages: list[dict[str, Any]] = []
        self.session: dict[str, Any] = {}
        self.closed: int | None = None

    async def send(self, **frame: Any) -> None:
        await self.ws.send_to(text_data=json.dumps(frame))

    async def send_raw(self, text: str) -> None:
        await self.ws.send_to(text_data=text)

    async def send_bytes(self, data: bytes) -> None:
        await self.ws.send_to(bytes_data=data)

    async def append(self, text: str, **extra: Any) -> None:
        await self.send(type="input_text.append", text=text, **extra)

    async def recv(self, timeout: float = 30.0) -> dict[str, Any]:
        output = await self.ws.receive_output(timeout=timeout)
        if output["type"] == "websocket.close":
            self.closed = output.get("code")
            message = {"type": "<close>", "code": self.closed, "reason": output.get("reason")}
        elif output.get("bytes") is not None:
            message = {"type": "<bytes>", "data": output["bytes"]}
        else:
            message = json.loads(output["text"])
        self.messages.append(message)
        return message

    async def until(self, kind: str, timeout: float = 60.0, **match: Any) -> dict[str, Any]:
        """Messages up to and including the first of type ``kind`` matching ``match``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                kinds = [m["type"] for m in self.messages[-20:]]
                raise AssertionError(f"no {kind} {match} within {timeout} s; last: {kinds}")
            message = await self.recv(timeout=left)
            if message["type"] == kind and all(message.get(k) == v for k, v in match.items()):
                return message
            if message["type"] == "<close>" and kind != "<close>":
                raise AssertionError(f"closed ({message}) before {kind}")

    async def quiet(self, seconds: float = 1.0) -> bool:
        """True if nothing arrives for ``seconds`` (without cancelling the application)."""
        return await self.ws.receive_nothing(timeout=seconds, interval=0.02)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["type"] == kind]

    def audio(self) -> bytes:
        """The audio received, in order (binary transport: the frames after ``audio``)."""
        parts = []
        for index, message in enumerate(self.messages):
            if message["type"] == "audio":
                if "audio" in message:
                    parts.append(base64.b64decode(message["audio"]))
                else:
                    parts.append(self.messages[index + 1]["data"])
        return b"".join(parts)

    async def close(self) -> None:
        with contextlib.suppress(BaseException):
            await self.ws.disconnect()


@pytest.fixture
async def speech_ws():
    """``await speech_ws("voice=alloy")``: a connected client; ``session`` holds
    session.created's session (empty when refused)."""
    from config.asgi import application

    opened: list[SpeechWs] = []

    async def connect(query: str = "", headers: list | None = None) -> SpeechWs:
        communicator = WebsocketCommunicator(application, f"{PATH}?{query}", headers=headers)
        connected, _ = await communicator.connect(timeout=20)
        assert connected
        client = SpeechWs(communicator)
        opened.append(client)
        first = await client.recv(timeout=30)
        if first["type"] == "session.created":
            client.session = first["session"]
        return client

    yield connect
    for client in opened:
        await client.close()
    await settle()


async def settle(timeout: float = 10.0) -> None:
    """Let sessions stop and job recorders write their last state before the tables are
    flushed (on PostgreSQL a write still running then deadlocks with the TRUNCATE)."""
    from speech.services import _RECORDERS
    from speechws import consumers

    if consumers._stopping:
        await asyncio.wait(list(consumers._stopping), timeout=timeout)
    if _RECORDERS:
        await asyncio.wait(list(_RECORDERS), timeout=timeout)


@pytest.fixture(scope="module")
def daphne(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneProcess]:
    """A real daphne on embedded SQLite, with a short idle timeout."""
    var_dir = tmp_path_factory.mktemp("speechws-var")
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(var_dir),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    server = DaphneProcess(env=env, name="daphne-speechws")
    yield server
    server.stop()
