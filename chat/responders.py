"""Who answers POST /chat: a deterministic built-in responder, or an OpenAI-compatible LLM.

`PARLEY_RESPONDER` names one responder or a comma-separated fallback chain ("llm,builtin"):
the first that answers wins and its name is the response's `provider_used`.

Every responder answers whole (`respond`) or as text deltas while it produces them
(`stream`, for the voice agent that speaks sentence by sentence); `open_stream` is the
streaming counterpart of `respond`, with the same fallback chain.
"""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import operator
import re
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
from django.conf import settings

from streams.errors import ApiError

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are Parley, a helpful voice assistant. Your answers are read aloud by a speech "
    "synthesizer: answer in one to three short plain sentences, without markdown, lists or code."
)
INTERRUPTED_NOTE = (
    "(The user interrupted you at this point; they did not hear the rest of that reply.)"
)


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of the same user, oldest first, for responders that use context.

    `interrupted`: the user cut the answer off while it was spoken, and `response` is only the
    part they actually heard.
    """

    text: str
    response: str
    interrupted: bool = False


class ResponderError(Exception):
    """The responder could not answer (network, HTTP status, malformed reply)."""


class Responder(Protocol):
    name: str

    async def respond(
        self,
        text: str,
        *,
        user: str,
        history: Sequence[Turn] = (),
        instructions: str | None = None,
    ) -> str:
        """The whole answer. `instructions` replaces the default system prompt."""
        ...

    def stream(
        self,
        text: str,
        *,
        user: str,
        history: Sequence[Turn] = (),
        instructions: str | None = None,
    ) -> AsyncIterator[str]:
        """The answer as non-empty text deltas, yielded as they are produced.

        Fails with ResponderError; closing the iterator (`aclose()`) releases its resources.
        """
        ...


# --- built-in --------------------------------------------------------------------------------

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_WORD_OPERATORS = (
    (r"\bplus\b", "+"),
    (r"\bminus\b", "-"),
    (r"\b(?:times|multiplied by)\b", "*"),
    (r"\bdivided by\b", "/"),
    (r"\bto the power of\b", "**"),
    (r"[x\u00d7]", "*"),  # x and the multiplication sign
    (r"\u00f7", "/"),  # the division sign
)


def _evaluate(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _evaluate(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left), _evaluate(node.right)
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 10**6):
            raise ValueError("too large")
        return _BINARY[type(node.op)](left, right)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_evaluate(node.operand))
    raise ValueError("not arithmetic")


def calculate(expression: str) -> str | None:
    """The value of a small arithmetic expression ("2 + 3 * 4", "7 divided by 2"), or None."""
    expression = expression.strip().rstrip("?.!= ").lower()
    for pattern, symbol in _WORD_OPERATORS:
        expression = re.sub(pattern, f" {symbol} ", expression)
    if not re.fullmatch(r"[\d\s.+\-*/%()]+", expression) or not re.search(r"\d", expression):
        return None
    if len(expression) > 200:
        return None
    try:
        value = _evaluate(ast.parse(expression, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, TypeError):
        return None
    if isinstance(value, float):
        value = round(value, 6)
        if value.is_integer():
            value = int(value)
    return str(value)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _spoken_expression(expression: str) -> str:
    return _clean(expression.rstrip("?.!= "))


Rule = tuple[re.Pattern[str], Callable[[re.Match[str], str], str | None]]


def _rules() -> list[Rule]:
    def rule(pattern: str):
        def register(fn: Callable[[re.Match[str], str], str | None]) -> None:
            rules.append((re.compile(pattern, re.IGNORECASE), fn))

        return register

    rules: list[Rule] = []

    @rule(r"^(?:hello|hi|hey|good (?:morning|afternoon|evening))\b")
    def greet(match: re.Match[str], user: str) -> str:
        return f"Hello, {user}! How can I help you?"

    @rule(r"^(?:what(?:'s| is) your name|who are you)\b")
    def identity(match: re.Match[str], user: str) -> str:
        return "I am Parley, a voice assistant. I answer out loud."

    @rule(r"^(?:how are you)\b")
    def wellbeing(match: re.Match[str], user: str) -> str:
        return "I am fine, thank you. How can I help you?"

    @rule(r"^(?:help|what can you do)\b")
    def help_(match: re.Match[str], user: str) -> str:
        return (
            "I can greet you, do arithmetic such as what is 2 plus 3, spell or reverse a word, "
            "count to a number up to 20, and repeat anything after say."
        )

    @rule(r"^(?:thanks|thank you)\b")
    def thanks(match: re.Match[str], user: str) -> str:
        return "You are welcome."

    @rule(r"^(?:bye|goodbye|see you)\b")
    def bye(match: re.Match[str], user: str) -> str:
        return f"Goodbye, {user}."

    @rule(r"^(?:my name is|call me)\s+([A-Za-z][\w' -]{0,40}?)[.!]?$")
    def name(match: re.Match[str], user: str) -> str:
        return f"Nice to meet you, {match.group(1).strip()}."

    @rule(r"^(?:what is|what's|calculate|compute)\s+(.+)$")
    def arithmetic(match: re.Match[str], user: str) -> str | None:
        value = calculate(match.group(1))
        if value is None:
            return None
        return f"{_spoken_expression(match.group(1))} is {value}."

    @rule(r"^spell\s+(\w+)")
    def spell(match: re.Match[str], user: str) -> str:
        word = match.group(1)
        return f"{word} is spelled {'-'.join(word.upper())}."

    @rule(r"^reverse\s+(.+?)[.!?]?$")
    def reverse(match: re.Match[str], user: str) -> str:
        return f"{match.group(1)[::-1]}"

    @rule(r"^count to (\d{1,3})\b")
    def count(match: re.Match[str], user: str) -> str:
        top = int(match.group(1))
        if not 1 <= top <= 20:
            return "I count from 1 to at most 20."
        return ", ".join(str(n) for n in range(1, top + 1)) + "."

    @rule(r"^(?:say|repeat)\s+(.+)$")
    def say(match: re.Match[str], user: str) -> str:
        return match.group(1)

    return rules


class BuiltinResponder:
    """Deterministic answers to simple patterns; anything else is echoed back.

    The same text from the same user always gets the same answer, which makes it the
    responder of tests and of deployments without a language model.
    """

    name = "builtin"
    rules = _rules()

    async def respond(
        self,
        text: str,
        *,
        user: str,
        history: Sequence[Turn] = (),
        instructions: str | None = None,
    ) -> str:
        return self.answer(text, user=user)

    async def stream(
        self,
        text: str,
        *,
        user: str,
        history: Sequence[Turn] = (),
        instructions: str | None = None,
    ) -> AsyncIterator[str]:
        """`answer()` word by word (each word with the whitespace after it)."""
        for index, word in enumerate(re.findall(r"\s*\S+\s*", self.answer(text, user=user))):
            if index:
                await asyncio.sleep(0)  # let other tasks (and a cancellation) in between
            yield word

    def answer(self, text: str, *, user: str) -> str:
        cleaned = _clean(text)
        for pattern, build in self.rules:
            match = pattern.search(cleaned)
            if match is not None:
                reply = build(match, user)
                if reply:
                    return reply
        value = calculate(cleaned)
        if value is not None:
            return f"{_spoken_expression(cleaned)} is {value}."
        return f"You said: {cleaned}"


# --- OpenAI-compatible chat completions ----------------------------------------------------


def completions_url(base_url: str) -> str:
    """`…/v1` gets `/chat/completions` appended; a full `…/chat/completions` URL is kept."""
    base = base_url.rstrip("/")
    return base if base.endswith("/chat/completions") else f"{base}/chat/completions"


class LLMResponder:
    """Any server speaking OpenAI's `POST /v1/chat/completions` (OpenAI, Ollama, vLLM, …)."""

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_s: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not base_url:
            raise ApiError(
                "responder_not_configured",
                "PARLEY_RESPONDER uses 'llm' but PARLEY_LLM_URL is not set.",
                status_code=503,
            )
        self.url = completions_url(base_url)
        self.model = model
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.transport = transport
        self.name = f"openai-compatible/{model}"

    def payload(
        self,
        text: str,
        *,
        user: str,
        history: Sequence[Turn],
        instructions: str | None = None,
    ) -> dict:
        """The chat-completions request: `instructions` (if not empty) as the system prompt,
        then the history; an interrupted turn is the heard text, "…" and a note saying so."""
        messages = [{"role": "system", "content": instructions or SYSTEM_PROMPT}]
        for turn in history:
            messages.append({"role": "user", "content": turn.text})
            if turn.interrupted:
                heard = turn.response.rstrip()
                messages.append({"role": "assistant", "content": f"{heard}…"})
                messages.append({"role": "system", "content": INTERRUPTED_NOTE})
            else:
                messages.append({"role": "assistant", "content": turn.response})
        messages.append({"role": "user", "content": text})
        return {"model": self.model, "messages": messages, "user": user, "stream": False}

    def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.AsyncClient(timeout=self.timeout_s, transport=self.transport, headers=headers)

    def _content(self, reply: Any) -> str:
        """choices[0].message.content of a whole (non-streamed) completion, stripped."""
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise ResponderError(f"{self.url} sent no choices[0].message.content") from exc
        if not isinstance(content, str) or not content.strip():
            raise ResponderError(f"{self.url} sent an empty answer")
        return content.strip()

    async def respond(
        self,
        text: str,
        *,
        user: str,
        history: Sequence[Turn] = (),
        instructions: str | None = None,
    ) -> str:
        body = self.payload(text, user=user, history=history, instructions=instructions)
        try:
            async with self._client() as client:
                response = await client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise ResponderError(f"{self.url} could not be reached: {exc!r}") from exc
        if response.status_code != 200:
            raise ResponderError(
                f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            reply = response.json()
        except ValueError as exc:
            raise ResponderError(f"{self.url} sent no choices[0].message.content") from exc
        return self._content(reply)

    async def stream(
        self,
        text: str,
        *,
        user: str,
        history: Sequence[Turn] = (),
        instructions: str | None = None,
    ) -> AsyncIterator[str]:
        """The completion with `"stream": true`, as its content deltas (Server-Sent Events).

        The concatenated deltas are what `respond` would answer: leading whitespace is
        dropped and whitespace is held back until more text follows it. A server that
        ignores `stream` and answers one JSON completion yields it as a single delta.
        `timeout_s` applies to connecting and to each wait for more bytes, not to the whole
        answer. Closing the generator closes the HTTP connection.
        """
        body = self.payload(text, user=user, history=history, instructions=instructions)
        body["stream"] = True
        reached = False
        try:
            async with (
                self._client() as client,
                client.stream("POST", self.url, json=body) as response,
            ):
                reached = True
                if response.status_code != 200:
                    await response.aread()
                    raise ResponderError(
                        f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}"
                    )
                media_type = response.headers.get("content-type", "").split(";")[0].strip()
                if media_type.lower() == "application/json":
                    await response.aread()
                    try:
                        reply = response.json()
                    except ValueError as exc:
                        raise ResponderError(
                            f"{self.url} sent no choices[0].message.content"
                        ) from exc
                    yield self._content(reply)
                    return
                pending = ""  # whitespace not yet passed on: only sent if text follows it
                started = False
                async with aclosing(_sse_data(response.aiter_lines())) as events:
                    async for data in events:
                        if data.strip() == "[DONE]":
                            break
                        delta = self._delta(data) or ""
                        if not started:
                            delta = delta.lstrip()
                        text_part = delta.rstrip()
                        if not text_part:
                            pending += delta
                            continue
                        chunk, pending = pending + text_part, delta[len(text_part) :]
                        started = True
                        yield chunk
                if not started:
                    raise ResponderError(f"{self.url} sent an empty answer")
        except httpx.HTTPError as exc:
            if not reached:
                raise ResponderError(f"{self.url} could not be reached: {exc!r}") from exc
            raise ResponderError(f"{self.url} failed while streaming: {exc!r}") from exc

    def _delta(self, data: str) -> str | None:
        """The content of one streamed chunk (None for role-only, usage or finish chunks)."""
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise ResponderError(f"{self.url} sent a malformed event: {data[:200]!r}") from exc
        if isinstance(chunk, dict) and chunk.get("error"):
            raise ResponderError(f"{self.url} sent an error: {str(chunk['error'])[:200]}")
        try:
            choices = chunk["choices"]
            if not choices:
                return None  # e.g. the usage chunk of stream_options.include_usage
            content = choices[0].get("delta", {}).get("content")
        except (KeyError, IndexError, TypeError, AttributeError) as exc:
            raise ResponderError(f"{self.url} sent a malformed chunk: {data[:200]!r}") from exc
        if content is not None and not isinstance(content, str):
            raise ResponderError(f"{self.url} sent a malformed chunk: {data[:200]!r}")
        return content


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The `data` of each Server-Sent Event (its `data:` lines joined by newlines).

    Comments (`:` keep-alives), other fields (`event:`, `id:`, `retry:`) and events without
    data are skipped; an event still open when the body ends is passed on too.
    """
    data: list[str] = []
    async for line in lines:
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value.removeprefix(" "))
    if data:
        yield "\n".join(data)


# --- selection -----------------------------------------------------------------------------

RESPONDER_NAMES = ("builtin", "llm")


def build_responder(name: str) -> Responder:
    if name == "builtin":
        return BuiltinResponder()
    if name == "llm":
        return LLMResponder(
            base_url=settings.PARLEY_LLM_URL,
            model=settings.PARLEY_LLM_MODEL,
            api_key=settings.PARLEY_LLM_KEY,
            timeout_s=settings.PARLEY_LLM_TIMEOUT_S,
        )
    raise ApiError(
        "responder_not_configured",
        f"PARLEY_RESPONDER names {name!r}; known responders: {', '.join(RESPONDER_NAMES)}.",
        status_code=503,
    )


def configured_chain() -> list[Responder]:
    names = [n.strip() for n in settings.PARLEY_RESPONDER.split(",") if n.strip()]
    return [build_responder(name) for name in names or ["builtin"]]


async def respond(
    text: str,
    *,
    user: str,
    history: Sequence[Turn] = (),
    instructions: str | None = None,
    chain: Sequence[Responder] | None = None,
) -> tuple[str, str]:
    """(answer, provider_used) from the first responder of the chain that answers."""
    chain = list(chain) if chain is not None else configured_chain()
    failures: list[str] = []
    for responder in chain:
        try:
            answer = await responder.respond(
                text, user=user, history=history, instructions=instructions
            )
        except ResponderError as exc:
            logger.warning("responder %s failed: %s", responder.name, exc)
            failures.append(f"{responder.name}: {exc}")
        else:
            return answer, responder.name
    raise _all_failed(failures)


def _all_failed(failures: list[str]) -> ApiError:
    return ApiError(
        "responder_failed",
        "No responder could answer: " + "; ".join(failures),
        status_code=502,
    )


class ReplyStream:
    """The text deltas of one responder's answer, the first one already received.

    An async iterator of non-empty strings; a failure after the first delta raises
    ResponderError (no other responder takes over mid-answer). `aclose()`, or leaving
    `async with`, stops the responder (an LLM's HTTP connection is closed).
    """

    def __init__(self, provider: str, first: str, rest: AsyncIterator[str]) -> None:
        self.provider = provider
        self._first: str | None = first
        self._rest = rest

    def __aiter__(self) -> ReplyStream:
        return self

    async def __anext__(self) -> str:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return await anext(self._rest)

    async def aclose(self) -> None:
        self._first = None
        await _aclose(self._rest)

    async def __aenter__(self) -> ReplyStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


async def _aclose(iterator: AsyncIterator[str]) -> None:
    close = getattr(iterator, "aclose", None)
    if close is not None:
        await close()


async def open_stream(
    text: str,
    *,
    user: str,
    history: Sequence[Turn] = (),
    instructions: str | None = None,
    chain: Sequence[Responder] | None = None,
) -> ReplyStream:
    """The answer of the first responder of the chain that starts one, as a ReplyStream.

    Each responder is tried until it yields its first delta; one that fails before (or
    ends without any delta) is logged and the next is tried, as in `respond`. None starts:
    ApiError `responder_failed` (502).
    """
    chain = list(chain) if chain is not None else configured_chain()
    failures: list[str] = []
    for responder in chain:
        deltas = responder.stream(text, user=user, history=history, instructions=instructions)
        try:
            first = await anext(deltas)
        except StopAsyncIteration:
            error = ResponderError("empty answer")
        except ResponderError as exc:
            error = exc
        except BaseException:
            await _aclose(deltas)
            raise
        else:
            return ReplyStream(responder.name, first, deltas)
        await _aclose(deltas)
        logger.warning("responder %s failed: %s", responder.name, error)
        failures.append(f"{responder.name}: {error}")
    raise _all_failed(failures)
