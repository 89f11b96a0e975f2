"""Responders: the deterministic built-in one, and an OpenAI-compatible LLM behind a real
stand-in chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from chat.responders import (
    BuiltinResponder,
    LLMResponder,
    ResponderError,
    Turn,
    calculate,
    completions_url,
)
from tests.chat.conftest import http
from tests.support.servers import free_port


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict


@dataclass
class Script:
    status: int = 200
    answer: str = "The capital of France is Paris."
    raw: bytes | None = None


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), ChatHandler)
        self.script = Script()
        self.seen: list[Seen] = []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ChatHandler(BaseHTTPRequestHandler):
    server: ChatServer

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        body = json.loads(self.rfile.read(length))
        self.server.seen.append(Seen(self.path, dict(self.headers), body))
        script = self.server.script
        if self.path != "/v1/chat/completions":
            payload, status = b'{"error": {"message": "not found"}}', 404
        elif script.raw is not None:
            payload, status = script.raw, script.status
        else:
            status = script.status
            payload = json.dumps(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": script.answer},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16},
                }
            ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def llm_server() -> Iterator[ChatServer]:
    server = ChatServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def use_llm(settings, llm_server):
    settings.PARLEY_RESPONDER = "llm"
    settings.PARLEY_LLM_URL = llm_server.base_url
    settings.PARLEY_LLM_MODEL = "stand-in-1"
    settings.PARLEY_LLM_KEY = "sk-test"
    return settings


# --- built-in --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("Hello Jarvis", "Hello, ada! How can I help you?"),
        ("what is 2 + 3 * 4?", "2 + 3 * 4 is 14."),
        ("What is 7 divided by 2", "7 divided by 2 is 3.5."),
        ("calculate (1+2)**3", "(1+2)**3 is 27."),
        ("12 x 12", "12 x 12 is 144."),
        ("what is 1/0", "You said: what is 1/0"),
        ("spell cat", "cat is spelled C-A-T."),
        ("reverse stressed", "desserts"),
        ("count to 5", "1, 2, 3, 4, 5."),
        ("count to 99", "I count from 1 to at most 20."),
        ("My name is Grace", "Nice to meet you, Grace."),
        ("say The quick brown fox.", "The quick brown fox."),
        ("who are you", "I am Parley, a voice assistant. I answer out loud."),
        ("thanks!", "You are welcome."),
        ("bye", "Goodbye, ada."),
        ("The   weather\nis nice", "You said: The weather is nice"),
    ],
)
async def test_builtin_answers_deterministically(text, answer):
    responder = BuiltinResponder()
    assert await responder.respond(text, user="ada") == answer
    assert await responder.respond(text, user="ada") == answer


def test_calculate_refuses_anything_but_small_arithmetic():
    assert calculate("2**3") == "8"
    assert calculate("__import__('os')") is None
    assert calculate("9**9**9") is None
    assert calculate("hello") is None


def test_completions_url():
    assert completions_url("http://h/v1") == "http://h/v1/chat/completions"
    assert completions_url("http://h/v1/") == "http://h/v1/chat/completions"
    assert completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


# --- the LLM against a real server -------------------------------------------------------------


async def test_llm_request_and_answer(llm_server):
    responder = LLMResponder(base_url=llm_server.base_url, model="m-1", api_key="sk-1")
    history = [Turn("Hi", "Hello!")]
    answer = await responder.respond("Capital of France?", user="ada", history=history)
    assert answer == "The capital of France is Paris."
    [seen] = llm_server.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.headers["Authorization"] == "Bearer sk-1"
    assert seen.body["model"] == "m-1" and seen.body["user"] == "ada"
    roles = [(m["role"], m["content"]) for m in seen.body["messages"]]
    assert roles[0][0] == "system"
    assert roles[1:] == [("user", "Hi"), ("assistant", "Hello!"), ("user", "Capital of France?")]


async def test_llm_http_error_and_unreachable_server(llm_server):
    llm_server.script = Script(status=500, raw=b'{"error": "boom"}')
    with pytest.raises(ResponderError, match="HTTP 500"):
        await LLMResponder(base_url=llm_server.base_url, model="m").respond("hi", user="u")
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with pytest.raises(ResponderError, match="could not be reached"):
        await LLMResponder(base_url=closed, model="m", timeout_s=2).respond("hi", user="u")


async def test_llm_malformed_reply_unit():
    """The one mocked test: replies no real server sends on purpose."""
    for reply in (b"not json", b'{"choices": []}', b'{"choices": [{"message": {"content": ""}}]}'):
        transport = httpx.MockTransport(
            lambda request, reply=reply: httpx.Response(200, content=reply)
        )
        responder = LLMResponder(base_url="http://llm/v1", model="m", transport=transport)
        with pytest.raises(ResponderError):
            await responder.respond("hi", user="u")


@pytest.mark.django_db(transaction=True)
async def test_chat_through_the_llm_with_history(use_llm, llm_server):
    async with http() as client:
        first = await client.post("/chat", json={"text": "Capital of France?", "user": "ada"})
        llm_server.script = Script(answer="It has about two million people.")
        second = await client.post("/chat", json={"text": "How big is it?", "user": "ada"})
    assert first.status_code == 200, first.text
    assert first.json()["response"] == "The capital of France is Paris."
    assert first.json()["provider_used"] == "openai-compatible/stand-in-1"
    assert second.json()["response"] == "It has about two million people."
    contents = [m["content"] for m in llm_server.seen[1].body["messages"][1:]]
    assert contents == [
        "Capital of France?",
        "The capital of France is Paris.",
        "How big is it?",
    ]


@pytest.mark.django_db(transaction=True)
async def test_llm_failure_is_502_or_falls_back_when_chained(use_llm, llm_server):
    llm_server.script = Script(status=503, raw=b"overloaded")
    async with http() as client:
        failed = await client.post("/chat", json={"text": "hello"})
        assert failed.status_code == 502
        assert failed.json()["error"] == "responder_failed"
        use_llm.PARLEY_RESPONDER = "llm,builtin"
        fallback = await client.post("/chat", json={"text": "hello", "user": "ada"})
    assert fallback.status_code == 200
    assert fallback.json()["provider_used"] == "builtin"
    assert fallback.json()["response"] == "Hello, ada! How can I help you?"


@pytest.mark.django_db(transaction=True)
async def test_misconfigured_responder_is_503(settings):
    settings.PARLEY_RESPONDER = "llm"
    settings.PARLEY_LLM_URL = ""
    async with http() as client:
        response = await client.post("/chat", json={"text": "hello"})
    assert response.status_code == 503
    assert response.json()["error"] == "responder_not_configured"
