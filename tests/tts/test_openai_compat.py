"""OpenAICompatEngine against a real HTTP server on 127.0.0.1 that streams PCM slowly."""

import asyncio
import contextlib
import email.parser
import email.policy
import json
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from speech.tts.base import (
    EngineUnavailable,
    SynthesisError,
    VoiceNotFound,
    VoiceSample,
    astream,
)
from speech.tts.openai_compat import OpenAICompatEngine


@dataclass
class Script:
    """What the stand-in server answers to the next request."""

    pieces: list[bytes] = field(default_factory=lambda: [b"\x01\x00" * 2400] * 10)
    delay: float = 0.05
    status: int = 200
    content_type: str = "audio/pcm"
    stall_after: int | None = None  # stop sending (but keep the connection) after N pieces


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    json: dict | None = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class SpeechServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script = Script()
        self.requests: list[Seen] = []
        self.pieces_written = 0
        self.disconnected = threading.Event()
        self.finished = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def reset(self, script: Script) -> None:
        self.script = script
        self.requests.clear()
        self.pieces_written = 0
        self.disconnected.clear()
        self.finished.clear()


def parse_multipart(content_type: str, body: bytes) -> tuple[dict, dict]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    form, files = {}, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if part.get_filename():
            files[name] = (part.get_filename(), payload)
        else:
            form[name] = payload.decode()
    return form, files


class Handler(BaseHTTPRequestHandler):
    server: SpeechServer

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        seen = Seen(path=self.path, headers={k.lower(): v for k, v in self.headers.items()})
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            seen.json = json.loads(body)
        elif content_type.startswith("multipart/form-data"):
            seen.form, seen.files = parse_multipart(content_type, body)
        self.server.requests.append(seen)
        script = self.server.script
        self.send_response(script.status)
        self.send_header("Content-Type", script.content_type)
        self.end_headers()  # HTTP/1.0 and no length: the body ends when we close
        try:
            for index, piece in enumerate(script.pieces):
                if script.stall_after is not None and index == script.stall_after:
                    time.sleep(5)
                self.wfile.write(piece)
                self.wfile.flush()
                self.server.pieces_written += 1
                time.sleep(script.delay)
        except (BrokenPipeError, ConnectionResetError):
            self.server.disconnected.set()
            return
        self.server.finished.set()


@pytest.fixture(scope="module")
def server():
    speech_server = SpeechServer()
    thread = threading.Thread(target=speech_server.serve_forever, daemon=True)
    thread.start()
    yield speech_server
    speech_server.shutdown()
    speech_server.server_close()


@pytest.fixture
def engine(server):
    engine = OpenAICompatEngine(base_url=server.base_url, api_key="sk-test", model="tts-1")
    yield engine
    engine.close()


def wav_header(sample_rate: int, channels: int) -> bytes:
    # a streamed WAV: unknown sizes are written as 0xFFFFFFFF
    fmt = struct.pack(
        "<HHIIHH", 1, channels, sample_rate, sample_rate * channels * 2, 2 * channels, 16
    )
    return (
        b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"LIST" + struct.pack("<I", 4) + b"INFO"  # a chunk to skip before the data
        + b"data" + struct.pack("<I", 0xFFFFFFFF)
    )  # fmt: skip


def tone(sample_rate: int, channels: int, seconds: float) -> bytes:
    frames = []
    for index in range(int(sample_rate * seconds)):
        value = int(8000 * math.sin(2 * math.pi * 440 * index / sample_rate))
        frames.append(struct.pack("<h", value) * channels)
    return b"".join(frames)


def test_request_is_openai_shaped_and_pcm_arrives_incrementally(server, engine):
    # odd-sized pieces: samples straddle network reads and must be re-joined
    server.reset(Script(pieces=[b"\x01\x02" * 2400 + b"\x03"] * 10, delay=0.05))
    started = time.perf_counter()
    arrivals, chunks, written_at_arrival = [], [], []
    for chunk in engine.synthesize(
        "Hello there", voice="nova", speed=1.25, params={"exaggeration": 0.7, "input": "no"}
    ):
        arrivals.append(time.perf_counter() - started)
        written_at_arrival.append(server.pieces_written)
        chunks.append(chunk)
    seen = server.requests[0]
    assert seen.path == "/v1/audio/speech"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.json == {
        "model": "tts-1",
        "input": "Hello there",  # params cannot replace the text
        "voice": "nova",
        "response_format": "pcm",
        "speed": 1.25,
        "exaggeration": 0.7,
    }
    assert all(len(chunk.pcm) % 2 == 0 for chunk in chunks)
    assert sum(len(chunk.pcm) for chunk in chunks) == 10 * 4801  # even: no byte lost
    assert len(chunks) >= 5
    # each piece was passed on as it came, long before the server had sent the rest
    assert written_at_arrival[0] <= 5
    assert arrivals[0] < 1.0
    assert arrivals[-1] - arrivals[0] > 0.3
    assert engine.sample_rate == 24000


def test_closing_the_stream_closes_the_connection(server, engine):
    server.reset(Script(pieces=[b"\x00\x00" * 1200] * 200, delay=0.02))
    stream = engine.synthesize("long text")
    for _ in range(3):
        next(stream)
    stream.close()
    assert server.disconnected.wait(2.0)
    assert server.pieces_written < 100


def test_cancel_event_unblocks_a_read_from_a_stalled_server(server, engine):
    server.reset(Script(pieces=[b"\x00\x00" * 1200] * 4, delay=0.0, stall_after=1))
    cancel = threading.Event()
    stream = engine.synthesize("text", cancel=cancel)
    next(stream)
    threading.Timer(0.2, cancel.set).start()
    started = time.perf_counter()
    rest = list(stream)  # blocked in a socket read until the cancel shuts the socket down
    assert time.perf_counter() - started < 1.0
    assert sum(len(chunk.pcm) for chunk in rest) < 2400


async def test_astream_is_native_async_incremental_and_cancellable(server, engine):
    server.reset(Script(pieces=[b"\x00\x00" * 2400] * 100, delay=0.03))
    started = time.perf_counter()
    arrivals, written_at_arrival = [], []
    got_five = asyncio.Event()

    async def consume():
        async for _chunk in astream(engine, "hi", voice="alloy"):
            arrivals.append(time.perf_counter() - started)
            written_at_arrival.append(server.pieces_written)
            if len(arrivals) == 5:
                got_five.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_five.wait(), 5.0)
    assert written_at_arrival[0] <= 5 and arrivals[0] < 1.0
    assert arrivals[4] - arrivals[0] > 0.08  # spread out as the server sent them
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(server.disconnected.wait, 2.0)
    assert server.pieces_written < 100
    await engine.aclose()


async def test_astream_aclose_closes_the_connection(server, engine):
    server.reset(Script(pieces=[b"\x00\x00" * 2400] * 100, delay=0.02))
    stream = astream(engine, "hi")
    async with contextlib.aclosing(stream):
        async for _chunk in stream:
            break
    assert await asyncio.to_thread(server.disconnected.wait, 2.0)
    await engine.aclose()


def test_voice_cloning_uploads_the_sample_as_multipart(server, engine):
    server.reset(Script(pieces=[b"\x05\x00" * 100] * 3, delay=0.0))
    sample = VoiceSample(b"RIFF-fake-voice", filename="me.wav")
    pcm = b"".join(
        chunk.pcm
        for chunk in engine.synthesize("Clone me", voice_sample=sample, params={"cfg_weight": 0.4})
    )
    assert len(pcm) == 600
    seen = server.requests[0]
    assert seen.path == "/v1/audio/speech/upload"
    assert seen.headers["authorization"] == "Bearer sk-test"
    assert seen.files == {"voice_file": ("me.wav", b"RIFF-fake-voice")}
    assert seen.form["input"] == "Clone me"
    assert seen.form["response_format"] == "pcm"
    assert seen.form["cfg_weight"] == "0.4"
    assert engine.capabilities.voice_cloning


@pytest.mark.parametrize("content_type", ["audio/wav", "application/octet-stream"])
def test_wav_answers_are_unwrapped_downmixed_and_resampled(server, engine, content_type):
    body = wav_header(16000, 2) + tone(16000, 2, 1.0)
    # the header arrives split across reads
    pieces = [body[:10], body[10:30], body[30:20000], body[20000:]]
    server.reset(Script(pieces=pieces, delay=0.02, content_type=content_type))
    pcm = b"".join(chunk.pcm for chunk in engine.synthesize("wav please"))
    assert len(pcm) / (2 * 24000) == pytest.approx(1.0, abs=0.02)


def test_http_errors_become_synthesis_errors(server, engine):
    server.reset(Script(pieces=[b'{"error": "voice is not allowed"}'], status=400, delay=0))
    with pytest.raises(SynthesisError, match="voice is not allowed") as info:
        list(engine.synthesize("hi"))
    assert info.value.status_code == 400


async def test_http_errors_become_synthesis_errors_async(server, engine):
    server.reset(Script(pieces=[b"rate limited"], status=429, delay=0))
    with pytest.raises(SynthesisError, match="rate limited"):
        async for _chunk in astream(engine, "hi"):
            pass
    await engine.aclose()


def test_compressed_formats_are_refused(server, engine):
    server.reset(Script(pieces=[b"ID3..."], content_type="audio/mpeg", delay=0))
    with pytest.raises(SynthesisError, match="audio/mpeg"):
        list(engine.synthesize("hi"))


def test_unreachable_server_is_engine_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = OpenAICompatEngine(base_url=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(EngineUnavailable):
        list(engine.synthesize("hi"))


def test_voice_checks_are_opt_in():
    relaxed = OpenAICompatEngine(base_url="http://127.0.0.1:9/v1")
    relaxed.check_request(voice="af_bella")  # other servers have other voice names
    strict = OpenAICompatEngine(base_url="http://127.0.0.1:9/v1", strict_voices=True)
    strict.check_request(voice="alloy")
    with pytest.raises(VoiceNotFound):
        strict.synthesize("hi", voice="af_bella")
    assert [voice.id for voice in strict.voices()][:3] == ["alloy", "ash", "ballad"]
