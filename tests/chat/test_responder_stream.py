"""Streaming responders: the built-in one word by word, and an OpenAI-compatible LLM that
streams Server-Sent Events, behind a real stand-in aiohttp server on 127.0.0.1 (plus
httpx.MockTransport for replies no real server sends on purpose)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from chat.responders import (
    INTERRUPTED_NOTE,
    SYSTEM_PROMPT,
    BuiltinResponder,
    LLMResponder,
    ReplyStream,
    ResponderError,
    Turn,
    open_stream,
    respond,
)
from streams.errors import ApiError
from tests.support.servers import free_port

WAIT_S = 5  # generous bound on anything that should take milliseconds


async def collect(deltas: AsyncIterator[str]) -> list[str]:
    async with asyncio.timeout(WAIT_S):
        return [delta async for delta in deltas]


# --- the stand-in server ---------------------------------------------------------------------


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return f"data: {data}\n\n".encode()


def chunk(model: str, delta: dict) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


@dataclass
class StreamScript:
    deltas: list[str] = field(default_factory=lambda: ["The capital ", "of France ", "is Paris."])
    status: int = 200
    as_json: bool = False  # ignore "stream": answer one plain JSON completion
    gate: asyncio.Event | None = None  # the last delta waits for it
    endless: bool = False  # after the deltas, keep sending until the client goes away
    delay_s: float = 0.01


class StandIn:
    """An OpenAI-compatible chat-completions server that streams, run in the test's loop."""

    def __init__(self) -> None:
        self.script = StreamScript()
        self.seen: list[dict] = []
        self.headers: list[dict[str, str]] = []
        self.sent_last = asyncio.Event()
        self.client_gone = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.base_url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.completions)
        self.runner = web.AppRunner(app, shutdown_timeout=1)
        await self.runner.setup()
        port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.base_url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen.append(body)
        self.headers.append(dict(request.headers))
        script = self.script
        model = body["model"]
        if script.status != 200:
            return web.json_response({"error": {"message": "boom"}}, status=script.status)
        if script.as_json:
            message = {"role": "assistant", "content": "".join(script.deltas)}
            return web.json_response(
                {"object": "chat.completion", "model": model, "choices": [{"message": message}]}
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        try:
            await response.write(b": keep-alive\n\n")
            await response.write(sse(chunk(model, {"role": "assistant", "content": ""})))
            for index, delta in enumerate(script.deltas):
                last = index == len(script.deltas) - 1
                if last and script.gate is not None:
                    async with asyncio.timeout(WAIT_S):
                        await script.gate.wait()
                await asyncio.sleep(script.delay_s)
                await response.write(sse(chunk(model, {"content": delta})))
                if last:
                    self.sent_last.set()
            while script.endless:
                await asyncio.sleep(script.delay_s)
                await response.write(sse(chunk(model, {"content": " and on"})))
            await response.write(b"\n" + sse(chunk(model, {})) + sse("[DONE]"))
            # Anything after [DONE] is never read.
            await response.write(sse("not json at all"))
        except (ConnectionResetError, asyncio.CancelledError):
            self.client_gone.set()
            raise
        await response.write_eof()
        return response


@pytest.fixture
async def stand_in() -> AsyncIterator[StandIn]:
    server = StandIn()
    await server.start()
    yield server
    await server.stop()


def llm(server: StandIn, **kwargs) -> LLMResponder:
    return LLMResponder(base_url=server.base_url, model="stand-in-1", **kwargs)


# --- built-in --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["Hello Jarvis", "what is 2 + 3 * 4?", "count to 5", "spell cat", "The   weather\nis nice"],
)
async def test_builtin_stream_is_the_answer_word_by_word(text):
    responder = BuiltinResponder()
    answer = await responder.respond(text, user="ada")
    deltas = await collect(responder.stream(text, user="ada"))
    assert "".join(deltas) == answer
    assert len(deltas) == len(answer.split()) and all(delta.strip() for delta in deltas)

    reply = await open_stream(text, user="ada", chain=[responder])
    assert reply.provider == "builtin"
    assert "".join(await collect(reply)) == answer


async def test_open_stream_uses_the_configured_chain(settings):
    settings.PARLEY_RESPONDER = "builtin"
    reply = await open_stream("say Streaming works.", user="ada")
    assert isinstance(reply, ReplyStream) and reply.provider == "builtin"
    assert await collect(reply) == ["Streaming ", "works."]


# --- the LLM against the stand-in server -------------------------------------------------------


async def test_llm_streams_deltas_as_they_are_produced(stand_in):
    gate = asyncio.Event()
    stand_in.script = StreamScript(gate=gate)
    history = [
        Turn("Hi", "Hello!"),
        Turn("Tell me a story", "Once upon a time there ", interrupted=True),
    ]
    deltas = llm(stand_in, api_key="sk-1").stream(
        "Capital of France?", user="ada", history=history, instructions="Be brief."
    )
    async with asyncio.timeout(WAIT_S):
        first = await anext(deltas)
    assert first == "The capital"
    assert not stand_in.sent_last.is_set()  # received while the server still holds the rest
    gate.set()
    rest = await collect(deltas)
    assert first + "".join(rest) == "The capital of France is Paris."
    assert stand_in.sent_last.is_set()

    [body] = stand_in.seen
    assert body["stream"] is True
    assert body["model"] == "stand-in-1" and body["user"] == "ada"
    assert stand_in.headers[0]["Authorization"] == "Bearer sk-1"
    assert [(m["role"], m["content"]) for m in body["messages"]] == [
        ("system", "Be brief."),
        ("user", "Hi"),
        ("assistant", "Hello!"),
        ("user", "Tell me a story"),
        ("assistant", "Once upon a time there…"),
        ("system", INTERRUPTED_NOTE),
        ("user", "Capital of France?"),
    ]


async def test_llm_respond_takes_instructions_and_the_default_prompt(stand_in):
    stand_in.script = StreamScript(as_json=True)
    responder = llm(stand_in)
    assert await responder.respond("hi", user="u", instructions="Speak French.") == (
        "The capital of France is Paris."
    )
    assert await responder.respond("hi", user="u") == "The capital of France is Paris."
    first, second = stand_in.seen
    assert first["stream"] is False and second["stream"] is False
    assert first["messages"][0] == {"role": "system", "content": "Speak French."}
    assert second["messages"][0] == {"role": "system", "content": SYSTEM_PROMPT}


async def test_llm_stream_through_open_stream(stand_in):
    reply = await open_stream("Capital?", user="ada", chain=[llm(stand_in), BuiltinResponder()])
    assert reply.provider == "openai-compatible/stand-in-1"
    assert "".join(await collect(reply)) == "The capital of France is Paris."


async def test_llm_answering_json_despite_stream_yields_one_delta(stand_in):
    stand_in.script = StreamScript(as_json=True, deltas=["  Paris, ", "of course.\n"])
    reply = await open_stream("Capital?", user="ada", chain=[llm(stand_in)])
    assert await collect(reply) == ["Paris, of course."]
    assert stand_in.seen[0]["stream"] is True


async def test_llm_http_error_falls_back_to_the_next_responder(stand_in, caplog):
    stand_in.script = StreamScript(status=500)
    with caplog.at_level(logging.WARNING, logger="chat.responders"):
        reply = await open_stream("hello", user="ada", chain=[llm(stand_in), BuiltinResponder()])
    assert reply.provider == "builtin"
    assert "".join(await collect(reply)) == "Hello, ada! How can I help you?"
    assert "HTTP 500" in caplog.text

    with pytest.raises(ApiError) as failed:
        await open_stream("hello", user="ada", chain=[llm(stand_in)])
    assert failed.value.code == "responder_failed" and failed.value.status_code == 502
    assert "HTTP 500" in str(failed.value)


async def test_unreachable_llm_falls_back():
    closed = LLMResponder(base_url=f"http://127.0.0.1:{free_port()}/v1", model="m", timeout_s=2)
    with pytest.raises(ResponderError, match="could not be reached"):
        await collect(closed.stream("hi", user="u"))
    reply = await open_stream("hi", user="ada", chain=[closed, BuiltinResponder()])
    assert reply.provider == "builtin"


async def test_closing_the_stream_closes_the_connection(stand_in):
    stand_in.script = StreamScript(deltas=["Once ", "upon ", "a time"], endless=True)
    reply = await open_stream("A long story", user="ada", chain=[llm(stand_in)])
    async with asyncio.timeout(WAIT_S):
        assert await anext(reply) == "Once"
        assert await anext(reply) == " upon"
    assert not stand_in.client_gone.is_set()
    await reply.aclose()
    async with asyncio.timeout(1):
        await stand_in.client_gone.wait()
    with pytest.raises(StopAsyncIteration):
        await anext(reply)


async def test_cancelling_the_consumer_closes_the_connection(stand_in):
    stand_in.script = StreamScript(deltas=["Once ", "upon ", "a time"], endless=True)
    received: list[str] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for delta in llm(stand_in).stream("A long story", user="ada"):
            received.append(delta)
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT_S):
        await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(1):
        await stand_in.client_gone.wait()
    assert received[0] == "Once"


# --- parsing edge cases (mocked) ---------------------------------------------------------------


class Body(httpx.AsyncByteStream):
    """A response body sent piece by piece; an exception among the pieces is raised."""

    def __init__(self, *pieces: bytes | Exception) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            if isinstance(piece, Exception):
                raise piece
            yield piece


def mocked(*pieces: bytes | Exception, content_type: str = "text/event-stream") -> LLMResponder:
    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, stream=Body(*pieces))

    transport = httpx.MockTransport(reply)
    return LLMResponder(base_url="http://llm/v1", model="m", transport=transport)


def content(text: str) -> bytes:
    return sse({"choices": [{"delta": {"content": text}}]})


async def test_sse_parsing_tolerates_what_real_servers_send():
    responder = mocked(
        b": ping\n\n",
        b"\n",
        sse({"choices": [{"delta": {"role": "assistant"}}]}),  # role only
        content(""),
        content("\n "),  # leading whitespace of the answer
        b"event: message\r\nid: 7\r\n" + content("Hello")[:-2] + b"\r\n\r\n",
        content(" "),
        content(" there"),
        sse({"choices": [{"delta": {}, "finish_reason": "stop"}]}),
        content(" \n"),  # trailing whitespace
        sse({"choices": [], "usage": {"total_tokens": 3}}),
        b"data:[DONE]\n\n",
        content("never read"),
    )
    assert await collect(responder.stream("hi", user="u")) == ["Hello", "  there"]


async def test_sse_data_split_across_reads_and_lines():
    whole = content("Hi")
    responder = mocked(whole[:9], whole[9:20], whole[20:], b'data: {"choices":\ndata: [{"delta"')
    received = []
    with pytest.raises(ResponderError, match="malformed"):
        async for delta in responder.stream("hi", user="u"):
            received.append(delta)
    assert received == ["Hi"]  # the unfinished last event is still parsed, and refused
    multi_line = b'data: {"choices":\ndata: [{"delta": {"content": "Two lines"}}]}\n\n'
    assert await collect(mocked(multi_line).stream("hi", user="u")) == ["Two lines"]


@pytest.mark.parametrize(
    "pieces",
    [
        (b"data: not json\n\n", content("late")),
        (b'data: {"choices": [{"delta": "text"}]}\n\n',),
        (b'data: {"error": {"message": "overloaded"}}\n\n',),
        (content("  "), sse("[DONE]")),  # nothing but whitespace: an empty answer
        (b"<html>Bad gateway</html>\n",),
    ],
)
async def test_failure_before_the_first_delta_falls_through(pieces):
    responder = mocked(*pieces)
    with pytest.raises(ResponderError):
        await collect(responder.stream("hi", user="u"))
    reply = await open_stream("hi", user="ada", chain=[responder, BuiltinResponder()])
    assert reply.provider == "builtin"


async def test_failure_after_the_first_delta_reaches_the_consumer():
    for broken in (b"data: {oops\n\n", httpx.ReadError("connection reset")):
        responder = mocked(content("Half an "), broken)
        reply = await open_stream("hi", user="ada", chain=[responder, BuiltinResponder()])
        assert reply.provider == "openai-compatible/m"
        assert await anext(reply) == "Half an"
        with pytest.raises(ResponderError, match=r"malformed|failed while streaming"):
            await anext(reply)


async def test_an_empty_answer_is_a_failure():
    class Silent:
        name = "silent"

        async def respond(self, text, *, user, history=(), instructions=None) -> str:
            return ""

        async def stream(self, text, *, user, history=(), instructions=None):
            return
            yield

    with pytest.raises(ApiError, match="silent: empty answer"):
        await open_stream("hi", user="u", chain=[Silent()])
    reply = await open_stream("hi", user="ada", chain=[Silent(), BuiltinResponder()])
    assert reply.provider == "builtin"


async def test_respond_still_answers_whole():
    answer, provider = await respond("count to 3", user="ada", chain=[BuiltinResponder()])
    assert (answer, provider) == ("1, 2, 3.", "builtin")
    responder = mocked(
        b'{"choices": [{"message": {"content": " Whole. "}}]}', content_type="application/json"
    )
    assert await collect(responder.stream("hi", user="u")) == ["Whole."]
