"""docs/asyncapi.yaml: a valid AsyncAPI 3.0.0 document (the official JSON Schema, vendored in
tests/data/asyncapi/, checked with jsonschema: no network) that agrees with the code.
jsonschema and PyYAML are drf-spectacular's own dependencies (requirements/base.txt), so the
check needs nothing more installed.

Agreement: every route of the WebSocket router is a channel (and the Socket.IO namespace is
one); each channel's `x-close-codes` are its consumer's CLOSE_* constants; the message types
and fields are the ones the protocol modules and the OpenAPI schema name; and the frames real
sessions send (`/ws/audio` with a spectator watching, `/v1/audio/speech/ws`, `/ws/streaming`),
opened in process through the real ASGI application, validate against the documented payloads
with exactly the documented keys. GET /asyncapi.yaml serves the file.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from channels.testing import WebsocketCommunicator

from config.asgi import application
from tests.conftest import pcm

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
SPEC_SCHEMA = Path(__file__).resolve().parent / "data" / "asyncapi" / "3.0.0.json"
TENTH = pcm(0.1)  # 4800 bytes at 24 kHz mono 16-bit
# Database access for every test, the pure ones too: the runtime's SQLite checkpoint thread,
# started by the session tests, would otherwise log pytest-django's refusal in the others.
pytestmark = pytest.mark.django_db


@cache
def _document_text() -> str:
    return DOCUMENT.read_text()


def document() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(_document_text()))


def spec_validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SPEC_SCHEMA.read_text())
    return jsonschema.Draft7Validator(schema)


def inlined(doc: dict[str, Any], node: Any) -> Any:
    """`node` with every `#/...` reference replaced by what it names (the document has no
    cycles), so a payload schema stands alone."""
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            return inlined(doc, resolve(doc, node["$ref"]))
        return {key: inlined(doc, value) for key, value in node.items()}
    if isinstance(node, list):
        return [inlined(doc, value) for value in node]
    return node


def declared_keys(schema: dict[str, Any]) -> set[str]:
    """The property names a payload schema declares (its own and its parts': allOf, and any
    branch of a oneOf, whose branches validation holds to their own keys)."""
    keys = set(schema.get("properties", {}))
    for part in (*schema.get("allOf", []), *schema.get("oneOf", [])):
        keys |= declared_keys(part)
    return keys


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref}: no {part!r}"
        node = node[part]
    return node


def message_pointer(channel: str, message: str) -> str:
    """The payload pointer of a channel's message (following its $ref to the component)."""
    ref = document()["channels"][channel]["messages"][message]["$ref"]
    return ref[1:] + "/payload"


def check_frame(channel: str, message: str, frame: dict[str, Any]) -> None:
    """`frame` validates against the documented payload, and has no key it does not list."""
    doc = document()
    schema = inlined(doc, resolve(doc, "#" + message_pointer(channel, message)))
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(frame), key=str)
    assert not errors, f"{channel}/{message}: {frame!r}: {[e.message for e in errors]}"
    undocumented = set(frame) - declared_keys(schema)
    assert not undocumented, f"{channel}/{message}: undocumented keys {undocumented}"


def message_schema(channel: str, message: str) -> dict[str, Any]:
    doc = document()
    return resolve(doc, "#" + message_pointer(channel, message))


def close_codes(channel: str) -> set[int]:
    return {int(code) for code in document()["channels"][channel]["x-close-codes"]}


# --- the document is AsyncAPI 3.0.0 ------------------------------------------------------------


def test_document_validates_against_the_asyncapi_3_schema():
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    errors = list(spec_validator().iter_errors(doc))
    assert not errors, jsonschema.exceptions.best_match(errors).message


def test_the_validator_refuses_a_broken_document():
    """The vendored schema is not vacuous: AsyncAPI 2's words and a bad address are refused."""
    validator = spec_validator()
    doc = document()
    doc["operations"]["ingestAnswer"]["action"] = "publish"
    assert not validator.is_valid(doc)
    doc = document()
    doc["channels"]["ingestAudio"]["address"] = 404
    assert not validator.is_valid(doc)
    doc = document()
    doc["asyncapi"] = "2.6.0"
    assert not validator.is_valid(doc)


def test_references_resolve_and_operations_use_their_channels_messages():
    doc = document()

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return own + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(doc):
        resolve(doc, ref)
    for name, operation in doc["operations"].items():
        channel = operation["channel"]["$ref"]
        assert channel.startswith("#/channels/"), name
        for message in operation["messages"]:
            # AsyncAPI 3: an operation's messages are a subset of its channel's.
            assert message["$ref"].startswith(channel + "/messages/"), (name, message)
    used = {m["$ref"] for op in doc["operations"].values() for m in op["messages"]}
    for channel_name, channel in doc["channels"].items():
        for message in channel["messages"]:
            assert f"#/channels/{channel_name}/messages/{message}" in used, (channel_name, message)


# --- the document agrees with the code -----------------------------------------------------------


def _address(route: str) -> str:
    """A Django route (`v1/status/progress/<str:job_id>/ws`) as an AsyncAPI address."""
    return "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route)


def test_every_websocket_route_is_a_channel():
    from recordings.sio import NAMESPACE, SOCKETIO_PATH
    from spectate.routing import websocket_urlpatterns

    doc = document()
    routes = {_address(str(pattern.pattern)) for pattern in websocket_urlpatterns}
    channels = doc["channels"].values()
    plain = {c["address"] for c in channels if c["servers"] == [{"$ref": "#/servers/parley"}]}
    assert plain == routes
    socketio = [c for c in channels if c["servers"] == [{"$ref": "#/servers/parley-socketio"}]]
    assert [c["address"] for c in socketio] == [NAMESPACE]
    assert doc["servers"]["parley-socketio"]["pathname"] == f"/{SOCKETIO_PATH}/"
    assert "Socket.IO" in socketio[0]["description"]
    for channel in channels:
        params = set(re.findall(r"\{(\w+)\}", channel["address"]))
        assert params == set(channel.get("parameters", {})), channel["address"]


# Each channel's consumer modules: their CLOSE_* constants are the codes the channel closes with.
CLOSE_MODULES = {
    "ingestAudio": ["ingest.session"],
    "spectate": ["spectate.consumers"],
    "speechProgressAll": [],
    "speechProgressJob": ["speech.consumers"],
    "speechSocket": ["speechws.session"],
    "agent": ["agents.consumers", "agents.pipeline"],
    "recordingWebSocket": ["recordings.consumers"],
}


def test_close_codes_are_the_consumers_own():
    import importlib

    from config.websocket import CLOSE_NOT_FOUND, CLOSE_UNAVAILABLE

    doc = document()
    assert set(CLOSE_MODULES) | {"recordingSocketIO"} == set(doc["channels"])
    for channel, modules in CLOSE_MODULES.items():
        code_constants = {
            value
            for module in modules
            for name, value in vars(importlib.import_module(module)).items()
            if name.startswith("CLOSE_") and isinstance(value, int)
        }
        documented = close_codes(channel)
        assert code_constants <= documented, (channel, code_constants - documented)
        # Parley's own codes (4000-4999): none documented that the code does not send.
        ours = {code for code in documented if code >= 4000}
        assert ours <= code_constants | {CLOSE_UNAVAILABLE}, (channel, ours - code_constants)
        assert CLOSE_UNAVAILABLE in documented, channel
    description = doc["info"]["description"]
    assert f"**{CLOSE_NOT_FOUND}**" in description and f"**{CLOSE_UNAVAILABLE}**" in description


def _type_consts(channel: str, operation_action: str) -> set[str]:
    doc = document()
    types = set()
    for operation in doc["operations"].values():
        if operation["channel"]["$ref"] != f"#/channels/{channel}":
            continue
        if operation["action"] != operation_action:
            continue
        for message in operation["messages"]:
            payload = resolve(doc, resolve(doc, message["$ref"])["$ref"])["payload"]
            parts = payload.get("allOf", [payload])
            for part in parts:
                const = part.get("properties", {}).get("type", {}).get("const")
                if const:
                    types.add(const)
    return types


def test_message_types_are_the_protocols():
    from agents.protocol import CLIENT_TYPES as AGENT_TYPES
    from speechws.protocol import CLIENT_TYPES as SPEECH_TYPES
    from streams.async_views import EVENT_TYPES

    assert _type_consts("spectate", "send") == set(EVENT_TYPES) | {"error"}
    assert _type_consts("speechSocket", "receive") == set(SPEECH_TYPES)
    assert _type_consts("agent", "receive") == set(AGENT_TYPES)


def test_fields_are_the_ones_the_code_and_the_openapi_schema_name():
    from agents.engines.vad import VadConfig
    from config.schema import ACK, CHUNK_FIELDS
    from ingest.session import FORMAT_FIELDS
    from speechws.protocol import SESSION_FIELDS

    doc = document()
    chunk = message_schema("ingestAudio", "chunkJson")
    assert set(chunk["properties"]) == set(CHUNK_FIELDS)
    assert chunk["required"] == ["stream_id", "seq"]
    ack = message_schema("ingestAudio", "ack")
    assert set(ack["properties"]) == {"type", *ACK["properties"]}
    assert set(ack["required"]) == {"type", *ACK["required"]}
    query = doc["channels"]["ingestAudio"]["bindings"]["ws"]["query"]["properties"]
    assert {"room", "speaker", "api_key", "stream_id", "seq", *FORMAT_FIELDS} <= set(query)
    settings = doc["components"]["schemas"]["SpeechSessionSettings"]["properties"]
    assert set(settings) == {spec.name for spec in SESSION_FIELDS}
    vad = doc["components"]["schemas"]["AgentVad"]["properties"]
    assert set(vad) == set(VadConfig.__dataclass_fields__)


# --- real sessions send what the document says ----------------------------------------------------


class Socket:
    """A WebsocketCommunicator that returns JSON frames as dicts, binary frames as
    `{"<bytes>": n}` and the close as `{"<close>": code, "reason": ...}`."""

    def __init__(self, path: str) -> None:
        self.ws = WebsocketCommunicator(application, path)

    async def open(self) -> None:
        connected, _ = await self.ws.connect(timeout=20)
        assert connected

    async def send(self, **frame: Any) -> None:
        await self.ws.send_to(text_data=json.dumps(frame))

    async def recv(self, timeout: float = 30) -> dict[str, Any]:
        output = await self.ws.receive_output(timeout)
        if output["type"] == "websocket.close":
            return {"<close>": output.get("code", 1000), "reason": output.get("reason")}
        if output.get("bytes") is not None:
            return {"<bytes>": len(output["bytes"])}
        return json.loads(output["text"])

    async def close(self) -> None:
        await self.ws.disconnect(timeout=10)


SPECTATOR_MESSAGES = {
    "state": "state",
    "audio_chunk": "audio_chunk",
    "speech": "speech",
    "playback_done": "playback_done",
    "input": "input",
    "turn": "turn",
    "error": "error",
}


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
async def test_ingest_and_spectator_frames_are_the_documented_ones():
    spectator = Socket("/spectate/ws?room=aapi")
    await spectator.open()
    state = await spectator.recv()
    check_frame("spectate", "state", state)

    ingest = Socket("/ws/audio?room=aapi&speaker=alice")
    await ingest.open()
    ready = await ingest.recv()
    check_frame("ingestAudio", "ready", ready)
    assert set(ready) == set(message_schema("ingestAudio", "ready")["required"])

    data = base64.b64encode(TENTH).decode()
    await ingest.send(stream_id="aapi-1", seq=0, data=data)
    await ingest.ws.send_to(bytes_data=TENTH)
    await ingest.send(stream_id="aapi-1", seq=2, data="AA==")  # half a frame
    await ingest.send(stream_id="aapi-1", seq=2, data="", done=True, speech_text="Hi there.")
    acks = [await ingest.recv() for _ in range(4)]
    assert [a["type"] for a in acks] == ["ack", "ack", "error", "ack"], acks
    ack_required = set(message_schema("ingestAudio", "ack")["required"])
    for ack in (acks[0], acks[1], acks[3]):
        check_frame("ingestAudio", "ack", ack)
    assert set(acks[0]) == set(acks[1]) == ack_required  # the hot path's ack
    assert set(acks[3]) == ack_required | {"duration_ms", "playback_ends_at"}  # the final one
    check_frame("ingestAudio", "error", acks[2])
    assert set(acks[2]) == set(message_schema("ingestAudio", "error")["required"])
    assert (acks[2]["error"], acks[2]["status"], acks[2]["seq"]) == ("partial_frame", 400, 2)

    # What the spectator saw, up to the release's closing state (0.2 s of audio later).
    seen: list[dict[str, Any]] = []
    while not (seen and seen[-1]["type"] == "state" and seen[-1]["speaker"] is None):
        seen.append(await spectator.recv(timeout=20))
    for event in seen:
        check_frame("spectate", SPECTATOR_MESSAGES[event["type"]], event)
    kinds = [event["type"] for event in seen]
    assert kinds[-6:] == ["playback_done", "speech", "input", "input", "turn", "state"], kinds
    assert {"turn", "audio_chunk"} <= set(kinds[:-6])
    await spectator.send(hello=1)
    refusal = await spectator.recv()
    check_frame("spectate", "error", refusal)
    assert refusal["error"] == "read_only"
    await ingest.close()
    await spectator.close()

    # A refused handshake: an error frame (seq null), then a documented close code.
    refused = Socket("/ws/audio?room=..")
    await refused.open()
    error = await refused.recv()
    check_frame("ingestAudio", "error", error)
    assert (error["error"], error["seq"]) == ("invalid_room", None)
    closed = await refused.recv()
    assert closed["<close>"] in close_codes("ingestAudio") and closed["<close>"] == 4400

    bad = Socket("/spectate/ws?after=x")
    await bad.open()
    error = await bad.recv()
    check_frame("spectate", "error", error)
    assert (await bad.recv())["<close>"] == 4400


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
async def test_speech_socket_frames_are_the_documented_ones():
    socket = Socket("/v1/audio/speech/ws?response_format=wav")
    await socket.open()
    created = await socket.recv()
    check_frame("speechSocket", "session.created", created)
    await socket.send(type="nonsense")
    check_frame("speechSocket", "error", await socket.recv())
    await socket.send(type="session.update", speed=1.2)
    check_frame("speechSocket", "session.updated", await socket.recv())
    await socket.send(type="input_text.append", text="Hello there. ", flush=True)
    await socket.send(type="end")
    names = {
        "audio.header": "audio.header",
        "audio": "audio",
        "sentence.done": "sentence.done",
        "input_text.flushed": "input_text.flushed",
        "session.done": "session.done",
    }
    kinds = []
    previous = None
    while True:
        frame = await socket.recv(timeout=60)
        if "<close>" in frame:
            assert frame["<close>"] == 1000 and 1000 in close_codes("speechSocket")
            break
        if "<bytes>" in frame:
            # Binary transport: each binary frame follows its audio (or audio.header) frame.
            assert previous is not None and previous["type"] in ("audio", "audio.header")
            assert frame["<bytes>"] == previous["bytes"]
            kinds.append("<bytes>")
        else:
            check_frame("speechSocket", names[frame["type"]], frame)
            kinds.append(frame["type"])
        previous = frame if "<bytes>" not in frame else None
    assert kinds[:3] == ["audio.header", "<bytes>", "audio"], kinds
    assert kinds[-1] == "session.done" and "sentence.done" in kinds, kinds


AGENT_SERVER_TYPES = (
    "session.created",
    "session.updated",
    "user.speech.started",
    "user.speech.stopped",
    "transcript.partial",
    "transcript.final",
    "agent.text.delta",
    "agent.text.done",
    "agent.audio.chunk",
    "agent.audio.end",
    "agent.interrupt",
    "turn.metrics",
    "error",
)


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(120)
async def test_agent_socket_frames_are_the_documented_ones():
    from tests.agents.conftest import quiesce

    socket = Socket("/ws/agent?room=aapi-agent")
    await socket.open()
    try:
        frames = [await socket.recv()]
        await socket.send(type="session.update", vad={"silence_ms": 700})
        await socket.send(type="no.such.type")
        await socket.send(type="text.input", text="say hi")
        while not frames or frames[-1].get("type") != "turn.metrics":
            frames.append(await socket.recv(timeout=60))
        for frame in frames:
            assert frame["type"] in AGENT_SERVER_TYPES, frame
            check_frame("agent", frame["type"], frame)
        kinds = [frame["type"] for frame in frames]
        for kind in ("session.created", "session.updated", "error", "transcript.final"):
            assert kind in kinds, kinds
        for kind in ("agent.text.done", "agent.audio.chunk", "agent.audio.end"):
            assert kind in kinds, kinds
    finally:
        await socket.close()
        await quiesce()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_recording_socket_frames_are_the_documented_ones(settings, tmp_path):
    settings.PARLEY_RECORDINGS_DIR = tmp_path / "recordings"
    socket = Socket("/ws/streaming?sample_rate_hz=16000")
    await socket.open()
    check_frame("recordingWebSocket", "response", await socket.recv())
    await socket.ws.send_to(bytes_data=pcm(0.1, sample_rate=16000))
    received = await socket.recv()
    check_frame("recordingWebSocket", "response", received)
    assert received["data"] == {"message": "received chunk"}
    await socket.send(event="audio_chunk", data={"chunk": "AAAA"})
    check_frame("recordingWebSocket", "error", await socket.recv())
    await socket.send(event="stop_recording")
    check_frame("recordingWebSocket", "resultFilePath", await socket.recv())
    await socket.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.timeout(60)
async def test_progress_socket_frames_are_the_documented_ones():
    every = Socket("/v1/status/progress/ws")
    await every.open()
    await every.send(hello=1)
    check_frame("speechProgressAll", "error", await every.recv())
    await every.close()
    for job in ("not-a-uuid", "00000000-0000-4000-8000-000000000000"):
        one = Socket(f"/v1/status/progress/{job}/ws")
        await one.open()
        check_frame("speechProgressJob", "error", await one.recv())
        closed = await one.recv()
        assert closed["<close>"] == 4404 and 4404 in close_codes("speechProgressJob")


@pytest.fixture(scope="module")
def parley_url() -> Iterator[str]:
    """A real Parley (`python -m config.server`) on this leg's database: python-socketio's
    client needs a real HTTP server."""
    from tests.support.parley_server import running_server

    with running_server(require_auth=False) as server:
        yield server.url


@pytest.mark.timeout(120)
async def test_socketio_events_are_the_documented_ones(parley_url):
    import socketio

    from recordings.sio import NAMESPACE

    assert document()["channels"]["recordingSocketIO"]["address"] == NAMESPACE
    events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    client = socketio.AsyncClient(reconnection=False)

    @client.on("*", namespace=NAMESPACE)
    async def any_event(event: str, data: Any = None) -> None:
        await events.put((event, data))

    async def next_event() -> tuple[str, Any]:
        return await asyncio.wait_for(events.get(), 20)

    await client.connect(
        parley_url,
        namespaces=[NAMESPACE],
        auth={"sample_rate_hz": 16000},
        transports=["websocket"],
    )
    try:
        event, data = await next_event()
        assert event == "response"
        check_frame("recordingSocketIO", "response", data)
        await client.emit(
            "audio_chunk", {"chunk": pcm(0.1, sample_rate=16000)}, namespace=NAMESPACE
        )
        event, data = await next_event()
        assert (event, data) == ("response", {"message": "received chunk"})
        check_frame("recordingSocketIO", "response", data)
        await client.emit("audio_chunk", {"chunk": "not bytes"}, namespace=NAMESPACE)
        event, data = await next_event()
        assert event == "error"
        check_frame("recordingSocketIO", "error", data)
        await client.emit("stop_recording", namespace=NAMESPACE)
        event, data = await next_event()
        assert event == "result_file_path"
        check_frame("recordingSocketIO", "result_file_path", data)
    finally:
        await client.disconnect()

    # A refused connection: Socket.IO's connect_error, its data the error object.
    refused = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []

    @refused.on("connect_error", namespace=NAMESPACE)
    async def connect_error(data: Any = None) -> None:
        errors.append(data)

    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(
            parley_url, namespaces=[NAMESPACE], auth={"format": "nope"}, transports=["websocket"]
        )
    await refused.disconnect()
    # The CONNECT_ERROR packet's data: {"message": the detail, "data": the error object}.
    assert len(errors) == 1 and errors[0]["data"]["error"] == "invalid_format", errors
    check_frame("recordingSocketIO", "connect_error", errors[0])


@pytest.mark.django_db
async def test_the_document_is_served_beside_the_openapi_schema():
    transport = httpx.ASGITransport(app=application)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        got = await client.get("/asyncapi.yaml")
        head = await client.head("/asyncapi.yaml")
    assert got.status_code == 200
    assert got.headers["content-type"].startswith("application/yaml")
    assert got.content == DOCUMENT.read_bytes()
    assert (head.status_code, head.content) == (200, b"")
