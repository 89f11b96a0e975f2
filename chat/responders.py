"""Who answers POST /chat: a deterministic built-in responder, or an OpenAI-compatible LLM.

`PARLEY_RESPONDER` names one responder or a comma-separated fallback chain ("llm,builtin"):
the first that answers wins and its name is the response's `provider_used`.
"""

from __future__ import annotations

import ast
import logging
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import httpx
from django.conf import settings

from streams.errors import ApiError

logger = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You are Parley, a helpful voice assistant. Your answers are read aloud by a speech "
    "synthesizer: answer in one to three short plain sentences, without markdown, lists or code."
)


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of the same user, oldest first, for responders that use context."""

    text: str
    response: str


class ResponderError(Exception):
    """The responder could not answer (network, HTTP status, malformed reply)."""


class Responder(Protocol):
    name: str

    async def respond(self, text: str, *, user: str, history: Sequence[Turn] = ()) -> str: ...


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

    async def respond(self, text: str, *, user: str, history: Sequence[Turn] = ()) -> str:
        return self.answer(text, user=user)

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

    def payload(self, text: str, *, user: str, history: Sequence[Turn]) -> dict:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn in history:
            messages.append({"role": "user", "content": turn.text})
            messages.append({"role": "assistant", "content": turn.response})
        messages.append({"role": "user", "content": text})
        return {"model": self.model, "messages": messages, "user": user, "stream": False}

    async def respond(self, text: str, *, user: str, history: Sequence[Turn] = ()) -> str:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            async with httpx.AsyncClient(
                timeout=self.timeout_s, transport=self.transport
            ) as client:
                response = await client.post(
                    self.url, json=self.payload(text, user=user, history=history), headers=headers
                )
        except httpx.HTTPError as exc:
            raise ResponderError(f"{self.url} could not be reached: {exc!r}") from exc
        if response.status_code != 200:
            raise ResponderError(
                f"{self.url} answered HTTP {response.status_code}: {response.text[:200]}"
            )
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ResponderError(f"{self.url} sent no choices[0].message.content") from exc
        if not isinstance(content, str) or not content.strip():
            raise ResponderError(f"{self.url} sent an empty answer")
        return content.strip()


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
    text: str, *, user: str, history: Sequence[Turn] = (), chain: Sequence[Responder] | None = None
) -> tuple[str, str]:
    """(answer, provider_used) from the first responder of the chain that answers."""
    chain = list(chain) if chain is not None else configured_chain()
    failures: list[str] = []
    for responder in chain:
        try:
            return await responder.respond(text, user=user, history=history), responder.name
        except ResponderError as exc:
            logger.warning("responder %s failed: %s", responder.name, exc)
            failures.append(f"{responder.name}: {exc}")
    raise ApiError(
        "responder_failed",
        "No responder could answer: " + "; ".join(failures),
        status_code=502,
    )
