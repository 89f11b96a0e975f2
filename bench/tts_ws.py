"""Speech over WebSocket (issue 10 §6): a sentence's last token to its first audio frame.

    .venv/bin/python -m bench.tts_ws                 # ~1 min; prints a Markdown section
    .venv/bin/python -m bench.tts_ws --write-docs    # also (re)writes "## Speech over
                                                     # WebSocket" in docs/benchmarks.md
    .venv/bin/python -m bench.tts_ws --quick         # fewer samples, a smoke run

One daphne (embedded SQLite in a temp PARLEY_VAR_DIR, `manage.py migrate` first) serves
Parley. For three English sentences (short, medium, long), interleaved in the same run:

- **ws, continued**: a fresh `WS /v1/audio/speech/ws` session (pcm, 24 kHz, voice alloy;
  opening it is timed apart) gets the sentence word by word, 20 ms apart (a language model
  at 50 tokens/s), then the first word of a next sentence 20 ms after the sentence's final
  token, as a model that goes on would send it. Measured: from sending the final token to
  the first `audio` frame (the 20 ms to the next token included: that is when a streaming
  client can know the sentence is complete).
- **ws, flush**: the same, the final token sent with `"flush": true` (the end of a turn).
- **http**: `POST /v1/audio/speech` with the whole sentence (pcm, 24 kHz, voice alloy) on a
  new connection: the time to the first body byte — what a client waiting for the whole
  sentence pays once it has it (the yardstick).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from bench.core import machine_info
from bench.tts import replace_section
from tests.support.servers import PROJECT_ROOT, DaphneProcess

DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
HEADING = "## Speech over WebSocket"
TOKEN_GAP_S = 0.020
SENTENCES = {
    "short (27 chars)": "Sure, I can help with that.",
    "medium (98 chars)": (
        "The harbour committee met on Tuesday and agreed that the old pier could not survive "
        "another winter."
    ),
    "long (205 chars)": (
        "After an hour of polite argument, the chairwoman proposed a compromise in which the "
        "town would borrow half of the money and the fishermen would raise the rest with a "
        "festival at the end of the summer."
    ),
}
NEXT_TOKEN = " Then"


def log(message: str) -> None:
    print(f"[bench.tts_ws] {message}", file=sys.stderr, flush=True)


def tokens_of(sentence: str) -> list[str]:
    words = sentence.split(" ")
    return [words[0], *(" " + word for word in words[1:])]


@dataclass
class Case:
    name: str
    connect_ms: list[float] = field(default_factory=list)
    ws_continued_ms: list[float] = field(default_factory=list)
    ws_flush_ms: list[float] = field(default_factory=list)
    http_ms: list[float] = field(default_factory=list)


async def ws_first_audio(url: str, sentence: str, *, flush: bool) -> tuple[float, float]:
    """(ms to open the session, ms from the final token to the first audio frame)."""
    started = time.perf_counter()
    async with websockets.connect(url, max_size=2**22) as ws:
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created", created
        connect_ms = (time.perf_counter() - started) * 1000
        tokens = tokens_of(sentence)
        for token in tokens[:-1]:
            await ws.send(json.dumps({"type": "input_text.append", "text": token}))
            await asyncio.sleep(TOKEN_GAP_S)
        final = {"type": "input_text.append", "text": tokens[-1]}
        if flush:
            final["flush"] = True
        sent_at = time.perf_counter()
        await ws.send(json.dumps(final))

        async def then() -> None:
            await asyncio.sleep(TOKEN_GAP_S)
            await ws.send(json.dumps({"type": "input_text.append", "text": NEXT_TOKEN}))

        follower = None if flush else asyncio.create_task(then())
        while True:
            message = await ws.recv()
            if isinstance(message, str) and json.loads(message)["type"] == "audio":
                first_ms = (time.perf_counter() - sent_at) * 1000
                break
            if isinstance(message, str) and json.loads(message)["type"] == "error":
                raise RuntimeError(message)
        if follower is not None:
            await follower
        await ws.send(json.dumps({"type": "cancel"}))
    return connect_ms, first_ms


def http_first_byte(port: int, sentence: str) -> float:
    body = json.dumps(
        {"model": "tts-1", "voice": "alloy", "input": sentence, "response_format": "pcm"}
    )
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    connection.request(
        "POST", "/v1/audio/speech", body=body, headers={"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    first = response.read(1)
    first_ms = (time.perf_counter() - start) * 1000
    response.read()
    connection.close()
    if response.status != 200 or not first:
        raise RuntimeError(f"HTTP {response.status}")
    return first_ms


def start_server(var_dir: Path) -> DaphneProcess:
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
    return DaphneProcess(env=env, name="daphne-bench-tts-ws")


def run(repeats: int) -> list[Case]:
    with tempfile.TemporaryDirectory(prefix="bench-tts-ws-") as var_dir:
        server = start_server(Path(var_dir))
        try:
            url = f"{server.ws_url}/v1/audio/speech/ws?voice=alloy&model=tts-1"
            port = int(server.url.rsplit(":", 1)[1])
            cases = [Case(name) for name in SENTENCES]
            # Warm up: the engine, the database, the code paths.
            for sentence in SENTENCES.values():
                asyncio.run(ws_first_audio(url, sentence, flush=True))
                http_first_byte(port, sentence)
            for round_ in range(repeats):
                for case, sentence in zip(cases, SENTENCES.values(), strict=True):
                    connect, continued = asyncio.run(ws_first_audio(url, sentence, flush=False))
                    case.connect_ms.append(connect)
                    case.ws_continued_ms.append(continued)
                    case.http_ms.append(http_first_byte(port, sentence))
                    _connect, flushed = asyncio.run(ws_first_audio(url, sentence, flush=True))
                    case.ws_flush_ms.append(flushed)
                log(f"round {round_ + 1}/{repeats}")
        finally:
            server.stop()
    return cases


def _stats(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"{statistics.median(values):.1f} / {p90:.1f}"


def section(cases: list[Case], repeats: int, command: str) -> str:
    machine = machine_info()
    rows = "\n".join(
        f"| {case.name} | {_stats(case.ws_continued_ms)} | {_stats(case.ws_flush_ms)} | "
        f"{_stats(case.http_ms)} | {_stats(case.connect_ms)} |"
        for case in cases
    )
    return f"""{HEADING}

`bench/tts_ws.py`: how soon a sentence streamed token by token over
`WS /v1/audio/speech/ws` is heard, against `POST /v1/audio/speech` for the same sentence
in the same run (the yardstick). One daphne, embedded SQLite, the default engine (eSpeak NG),
voice `alloy`, pcm at 24 kHz, {repeats} samples per cell, interleaved; median / p90 in ms.

- **ws, continued**: tokens 20 ms apart (a model at 50 tokens/s); the clock starts when the
  sentence's final token (the word with the full stop) is sent and stops at the first
  `audio` frame. The sentence is known complete only when whitespace follows its full stop,
  i.e. with the next token, sent 20 ms later: those 20 ms are inside the figure.
- **ws, flush**: the final token carries `"flush": true` (the end of a turn).
- **http first byte**: the whole sentence POSTed on a new connection, to its first body byte.
- **ws session open**: connecting and `session.created` (voice resolved), paid once per
  session, before any text; not in the other columns.

| sentence | ws, continued | ws, flush | http first byte | ws session open |
|---|---|---|---|---|
{rows}

Over the socket a sentence's first audio leaves within a few milliseconds of the moment it
is known complete — as soon as a one-shot HTTP request for the same sentence would start
answering. The difference is what comes before: the HTTP client must hold the whole text
before it asks, the socket's client sends tokens as they come, and while one sentence plays
the next is synthesized, so a long answer's first sentence is heard after its own last token,
not the answer's. With `flush` there is no next token to wait for; continued, the figure is
the 20 ms to the next token plus the same few milliseconds.

- Machine: {machine["cpu"]}, {machine["nproc"]} cores, {machine["ram"]} RAM; Python
  {machine["python"]}; commit {machine["commit"]}. The machine is shared: other benches and
  test suites may have run at the same time.
- Date: {machine["date"]}
- Command: `{command}`
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="samples per cell")
    parser.add_argument("--quick", action="store_true", help="3 samples per cell")
    parser.add_argument("--write-docs", action="store_true", help=f"update {HEADING!r}")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 3
    command = shlex.join([".venv/bin/python", "-m", "bench.tts_ws", *sys.argv[1:]])
    cases = run(args.repeats)
    text = section(cases, args.repeats, command)
    print(text)
    if args.write_docs:
        replace_section(DOCS, HEADING, text)
        log(f"wrote the {HEADING!r} section of {DOCS}")


if __name__ == "__main__":
    main()
