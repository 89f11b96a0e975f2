"""Speech synthesis latency (issue #3 §10): POST /v1/audio/speech against the engine itself.

    .venv/bin/python -m bench.tts                  # ~2 min; prints a Markdown section
    .venv/bin/python -m bench.tts --write-docs     # also (re)writes "## Speech synthesis"
                                                   # in docs/benchmarks.md, nothing else
    .venv/bin/python -m bench.tts --quick          # fewer samples, a smoke run
    .venv/bin/python -m bench.tts --strategies [--write-docs]
                                                   # streaming_strategy adaptive vs sentence
                                                   # ("## Adaptive chunking")

One daphne (embedded SQLite in a temp PARLEY_VAR_DIR, `manage.py migrate` first) serves
Parley. For 100, 1,000 and 4,000 characters of English, every response_format, at
concurrency 1 and 4, the client measures the time to the first body byte and to the last
byte (http.client, one connection per request). In the same run, between the HTTP cases,
the bench process runs the same engine (eSpeak NG through speech.tts, the same wheel) on the
same text at the same concurrency and measures its first chunk and its full synthesis: the
server's overhead shows as the difference and the ratio. The daphne process's RSS is sampled
every 2 ms while a 4,000-character text streams, to report the growth over its idle RSS.

``--strategies`` instead compares ``streaming_strategy`` ``adaptive`` with ``sentence`` on the
same daphne, interleaved request by request: for a few texts and both local engines (eSpeak
NG, Piper), the time to the first body byte, the total time, and the longest a player that
starts at the first byte would wait for audio (underrun) when it plays in real time.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import machine_info
from tests.support.servers import PROJECT_ROOT, DaphneProcess

DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
HEADING = "## Speech synthesis"
STRATEGY_HEADING = "## Adaptive chunking"
FORMATS = ("pcm", "wav", "mp3", "opus", "aac", "flac")
RAW = ["pcm", "wav"]
COMPRESSED = ("mp3", "opus", "aac", "flac")
WHOLE_FILE = ("flac",)  # sent when complete (speech.encoding): first byte = whole synthesis
SIZES = (100, 1000, 4000)
PROSE = (
    "The committee met on a grey Tuesday morning to review the plans for the new harbour. "
    "Everyone agreed that the old pier could not survive another winter of storms, yet nobody "
    "wanted to pay for the repairs. After an hour of polite argument, the chairwoman proposed "
    "a compromise: the town would borrow half the money, and the fishermen would raise the "
    "rest with a summer festival. Surprisingly, the motion passed without a single objection! "
)


def log(message: str) -> None:
    print(f"[bench.tts] {message}", file=sys.stderr, flush=True)


def text_of(chars: int) -> str:
    """English prose cut at a word boundary to about ``chars`` characters, ending a sentence."""
    text = (PROSE * (chars // len(PROSE) + 2))[:chars]
    text = text[: text.rfind(" ")] if len(text) == chars else text
    return text.rstrip(" ,;:") + "."


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Sample:
    first_ms: float
    total_ms: float
    nbytes: int = 0
    server_first_audio_ms: float | None = None
    server_ttfb_ms: float | None = None


def http_speech(port: int, text: str, fmt: str) -> Sample:
    body = json.dumps({"model": "tts-1", "voice": "alloy", "input": text, "response_format": fmt})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.connect()
    start = time.perf_counter()
    connection.request(
        "POST", "/v1/audio/speech", body=body, headers={"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    first = response.read(1)
    first_at = time.perf_counter()
    rest = response.read()
    done_at = time.perf_counter()
    connection.close()
    if response.status != 200 or not first:
        raise RuntimeError(f"HTTP {response.status}: {(first + rest)[:300]!r}")
    sample = Sample((first_at - start) * 1000, (done_at - start) * 1000, len(first) + len(rest))
    job_id = response.getheader("X-Speech-Job-Id")
    progress = _get_json(port, f"/v1/status/progress/{job_id}")
    sample.server_first_audio_ms = progress.get("first_audio_ms")
    sample.server_ttfb_ms = progress.get("ttfb_ms")
    return sample


def _get_json(port: int, path: str) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(100):  # the job row is written right after the stream ends
        connection.request("GET", path)
        body = json.loads(connection.getresponse().read())
        if body.get("status") == "completed":
            break
        time.sleep(0.01)
    connection.close()
    return body


def engine_synthesis(engine, text: str) -> Sample:
    start = time.perf_counter()
    first_at = None
    nbytes = 0
    for chunk in engine.synthesize(text, voice="en-us"):
        if first_at is None and chunk.pcm:
            first_at = time.perf_counter()
        nbytes += len(chunk.pcm)
    done_at = time.perf_counter()
    return Sample((first_at - start) * 1000, (done_at - start) * 1000, nbytes)


def concurrently(concurrency: int, job) -> list[Sample]:
    barrier = threading.Barrier(concurrency)

    def run(_: int) -> Sample:
        barrier.wait()
        return job()

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(run, range(concurrency)))


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def peak_growth_mb(pid: int, request) -> tuple[float, float]:
    """(idle RSS, peak growth over it while ``request`` runs), in MiB."""
    idle = rss_kb(pid)
    peak = idle
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kb(pid))
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        request()
    finally:
        stop.set()
        sampler.join()
    return idle / 1024, (peak - idle) / 1024


# --- the run ------------------------------------------------------------------------------


@dataclass
class Case:
    chars: int
    fmt: str
    concurrency: int
    server: list[Sample] = field(default_factory=list)
    engine: list[Sample] = field(default_factory=list)

    @staticmethod
    def median(samples: list[Sample], attribute: str) -> float:
        values = [getattr(s, attribute) for s in samples if getattr(s, attribute) is not None]
        return statistics.median(values) if values else float("nan")


def start_server(var_dir: Path, app: str, extra_env: dict[str, str] | None = None) -> DaphneProcess:
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(var_dir),
        **(extra_env or {}),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    return DaphneProcess(app, env=env, name="daphne-bench-tts")


def run(
    args: argparse.Namespace,
    app: str,
    formats: list[str],
    *,
    memory_formats: tuple[str, ...],
    env: dict[str, str] | None = None,
) -> tuple[list[Case], dict[str, tuple[float, float]]]:
    from speech.tts.espeak import EspeakEngine

    # The server's engine as it is set up (PARLEY_ESPEAK_PROCESSES, in this leg's env or ours).
    processes = (env or {}).get("PARLEY_ESPEAK_PROCESSES")
    engine = EspeakEngine(processes=int(processes) if processes is not None else None)
    memory: dict[str, tuple[float, float]] = {}
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-tts-") as var_dir:
        server = start_server(Path(var_dir), app, env)
        log(f"daphne {app} on port {server.port}")
        try:
            for fmt in formats:  # warm up: engine built, ffmpeg paged in
                http_speech(server.port, text_of(100), fmt)
            engine_synthesis(engine, text_of(100))
            # Memory first, while the process has only served the short warm-up requests.
            for fmt in memory_formats:
                text = text_of(4000)
                memory[fmt] = peak_growth_mb(
                    server.pid, lambda t=text, f=fmt: http_speech(server.port, t, f)
                )
                log(f"memory {fmt}: idle {memory[fmt][0]:.1f} MiB, growth {memory[fmt][1]:.1f}")
            for chars in args.sizes:
                text = text_of(chars)
                repeats = max(1, args.repeats if chars < 4000 else args.repeats // 2 + 1)
                for concurrency in (1, 4):
                    rounds = repeats if concurrency == 1 else max(1, repeats // 2)
                    for fmt in formats:
                        case = Case(chars, fmt, concurrency)
                        for _ in range(rounds):
                            # Interleaved, so both see the same machine state.
                            case.engine += concurrently(
                                concurrency, lambda t=text: engine_synthesis(engine, t)
                            )
                            case.server += concurrently(
                                concurrency,
                                lambda t=text, f=fmt: http_speech(server.port, t, f),
                            )
                        cases.append(case)
                        log(
                            f"{chars:>5} chars {fmt:>4} c={concurrency}: first byte "
                            f"{Case.median(case.server, 'first_ms'):.1f} ms vs engine "
                            f"{Case.median(case.engine, 'first_ms'):.1f} ms"
                        )
        finally:
            server.stop()
    return cases, memory


# --- streaming_strategy: adaptive vs sentence ----------------------------------------------

STRATEGY_ENGINES = (("espeak", "tts-1", "alloy"), ("piper", "piper", None))
# name -> text: the prose (its first sentence is 84 characters), a first sentence far longer
# than a piece's first budget, and a long text.
LONG_FIRST = (
    "When the committee finally met on that grey Tuesday morning in the back room of the old "
    "harbour office, with the rain hammering on the windows and the fishermen waiting outside "
    "for an answer, nobody expected a decision. "
)


def strategy_texts() -> dict[str, str]:
    return {
        "prose 300": text_of(300),
        "long first sentence 400": (LONG_FIRST + PROSE)[:400].rsplit(" ", 1)[0] + ".",
        "prose 1000": text_of(1000),
    }


@dataclass
class Timed:
    first_ms: float
    total_ms: float
    underrun_ms: float  # the longest wait for audio of a real-time player started at byte 1
    audio_s: float


def http_timed(port: int, body: dict) -> Timed:
    """POST /v1/audio/speech for raw pcm and time every read: the first byte, the last, and
    how far the audio ever fell behind a player that started at the first byte."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    connection.connect()
    start = time.perf_counter()
    connection.request(
        "POST",
        "/v1/audio/speech",
        body=json.dumps({**body, "response_format": "pcm"}),
        headers={"Content-Type": "application/json"},
    )
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read()[:300]!r}")
    rate = int(response.getheader("X-Sample-Rate"))
    arrivals: list[tuple[float, int]] = []  # (when, bytes before this read)
    received = 0
    while data := response.read1(65536):
        arrivals.append((time.perf_counter(), received))
        received += len(data)
    done = time.perf_counter()
    connection.close()
    first_at = arrivals[0][0]
    # The player needs byte b at first_at + b / bytes_per_second; it waits when it arrives later.
    per_second = rate * 2
    underrun = max(0.0, *(when - (first_at + before / per_second) for when, before in arrivals))
    return Timed(
        (first_at - start) * 1000, (done - start) * 1000, underrun * 1000, received / per_second
    )


@dataclass
class StrategyCase:
    text_name: str
    chars: int
    engine: str
    samples: dict[str, list[Timed]] = field(default_factory=dict)  # strategy -> samples

    def median(self, strategy: str, attribute: str) -> float:
        return statistics.median(getattr(t, attribute) for t in self.samples[strategy])


def run_strategies(args: argparse.Namespace) -> list[StrategyCase]:
    from speech.tts.text import split_spans

    cases = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-tts-") as var_dir:
        server = start_server(Path(var_dir), "config.asgi:application")
        try:
            for engine, model, voice in STRATEGY_ENGINES:
                base = {"model": model, **({"voice": voice} if voice else {})}
                http_timed(server.port, {**base, "input": text_of(100)})  # warm up the engine
                for name, text in strategy_texts().items():
                    case = StrategyCase(name, len(text), engine, {"sentence": [], "adaptive": []})
                    for _ in range(args.repeats):
                        for strategy in ("sentence", "adaptive"):  # interleaved
                            body = {**base, "input": text, "streaming_strategy": strategy}
                            case.samples[strategy].append(http_timed(server.port, body))
                    pieces = {s: len(split_spans(text, s, 200)) for s in case.samples}
                    log(
                        f"{engine} {name}: first byte sentence "
                        f"{case.median('sentence', 'first_ms'):.0f} ms, adaptive "
                        f"{case.median('adaptive', 'first_ms'):.0f} ms; pieces {pieces}"
                    )
                    cases.append(case)
        finally:
            server.stop()
    return cases


def strategy_section(cases: list[StrategyCase], command: str) -> str:
    from speech.tts.text import split_text

    machine = machine_info()
    lines = [
        "| engine | text | chars | first piece (adaptive) | first byte ms sentence / "
        "adaptive | total ms sentence / adaptive | longest underrun ms sentence / adaptive "
        "| audio s sentence / adaptive |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    texts = strategy_texts()
    for case in cases:
        first = split_text(texts[case.text_name], "adaptive", 200)[0]

        def pair(attribute: str, digits: int = 0, case: StrategyCase = case) -> str:
            return " / ".join(
                f"{case.median(s, attribute):.{digits}f}" for s in ("sentence", "adaptive")
            )

        lines.append(
            f"| {case.engine} | {case.text_name} | {case.chars} | {len(first)} chars | "
            f"{pair('first_ms')} | {pair('total_ms')} | {pair('underrun_ms')} | "
            f"{pair('audio_s', 2)} |"
        )
    table_text = "\n".join(lines)
    repeats = len(cases[0].samples["sentence"]) if cases else 0
    return f"""{STRATEGY_HEADING}

`streaming_strategy: "adaptive"` against `"sentence"` (both with `streaming_chunk_size` 200,
the default) on one daphne with the embedded SQLite database, raw `pcm` (24 kHz), one request
at a time, the two strategies interleaved request by request; medians of {repeats} each.
"First byte" and "total" are at the client (http.client, a new connection per request).
"Longest underrun" is the longest a player that starts playing at the first byte, in real
time, would wait for audio that has not arrived yet (0: it never starves). "Audio s" is the
audio's length: each piece ends with a pause, so more pieces make it a little longer.
`adaptive` cuts the first piece at 40 characters (the first sentence if that short, else its
first clause, else its first words) and lets each later piece be twice as long as the one
before up to the chunk size.

- Machine: {machine["cpu"]}, {machine["nproc"]} cores, {machine["ram"]} RAM; Python
  {machine["python"]}; commit {machine["commit"]}. The machine is shared: other benches and
  test suites may have run at the same time.
- Date: {machine["date"]}
- Command: `{command}`

{table_text}
"""


# --- report -------------------------------------------------------------------------------


def table(cases: list[Case]) -> str:
    lines = [
        "| chars | format | conc. | engine first chunk ms | first byte ms | overhead ms "
        "| first byte / engine first | engine full ms | server total ms | first byte / "
        "engine full | server: engine first / first byte ms |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case in cases:
        engine_first = Case.median(case.engine, "first_ms")
        first = Case.median(case.server, "first_ms")
        engine_full = Case.median(case.engine, "total_ms")
        total = Case.median(case.server, "total_ms")
        inside_audio = Case.median(case.server, "server_first_audio_ms")
        inside_ttfb = Case.median(case.server, "server_ttfb_ms")
        lines.append(
            f"| {case.chars} | {case.fmt} | {case.concurrency} | {engine_first:.1f} | "
            f"{first:.1f} | {first - engine_first:+.1f} | {first / engine_first:.1f}x | "
            f"{engine_full:.1f} | {total:.1f} | {first / engine_full:.3f} | "
            f"{inside_audio:.1f} / {inside_ttfb:.1f} |"
        )
    return "\n".join(lines)


def verdicts(cases: list[Case], memory: dict[str, tuple[float, float]]) -> list[str]:
    def verdict(ok: bool) -> str:
        return "**PASS**" if ok else "**MISS**"

    def overhead(case: Case) -> float:
        return Case.median(case.server, "first_ms") - Case.median(case.engine, "first_ms")

    lines = []
    # Issue 11 §3: first byte within 10 ms of the engine's first chunk, per format and
    # concurrency (the worst size).
    for concurrency in sorted({c.concurrency for c in cases}):
        per_format = []
        for fmt in dict.fromkeys(c.fmt for c in cases):
            mine = [c for c in cases if c.fmt == fmt and c.concurrency == concurrency]
            if mine:
                worst = max(overhead(c) for c in mine)
                per_format.append(f"{fmt} {worst:+.1f} ms {verdict(worst <= 10)}")
        lines.append(
            f"- First byte within 10 ms of the engine's first chunk, concurrency {concurrency} "
            f"(worst median overhead over the sizes): {', '.join(per_format)}"
        )
    long = [c for c in cases if c.chars == 4000 and c.fmt not in WHOLE_FILE]
    if long:
        worst_ratio = max(
            Case.median(c.server, "first_ms") / Case.median(c.engine, "total_ms") for c in long
        )
        lines.append(
            "- 4,000 characters, first byte under a tenth of the engine's full synthesis "
            f"(streamed formats): worst first byte / engine full = {worst_ratio:.3f} — "
            f"{verdict(worst_ratio < 0.1)}"
        )
    if memory:
        worst_memory = max(growth for _, growth in memory.values())
        growths = ", ".join(f"{fmt} {growth:.1f} MiB" for fmt, (_, growth) in memory.items())
        lines.append(
            "- Memory growth while streaming 4,000 characters under 20 MB: "
            f"{growths} — {verdict(worst_memory < 20)}"
        )
    return lines


@dataclass
class Leg:
    title: str
    app: str
    cases: list[Case]
    memory: dict[str, tuple[float, float]]
    env: dict[str, str] = field(default_factory=dict)


def _leg(legs: list[Leg], env_key: str) -> Leg | None:
    return next((leg for leg in legs if env_key in leg.env), None)


def comparisons(legs: list[Leg]) -> str:
    """The legs side by side: PyAV against the ffmpeg pipe (compressed formats), eSpeak's
    worker processes against its in-process thread (raw formats)."""
    main = legs[0]
    parts = []

    def med(case: Case, attribute: str, where: str = "server") -> float:
        return Case.median(getattr(case, where), attribute)

    ffmpeg = _leg(legs, "PARLEY_SPEECH_ENCODER")
    if ffmpeg is not None:
        lines = [
            "### PyAV against the ffmpeg pipe (same run)",
            "",
            "First byte over the engine's first chunk (each leg against its own interleaved "
            "engine runs) and server total time, PyAV (as wired) / ffmpeg pipe; last "
            "column: PyAV's total ÷ ffmpeg's.",
            "",
            "| chars | format | conc. | first byte overhead ms PyAV / ffmpeg | total ms PyAV / "
            "ffmpeg | total PyAV ÷ ffmpeg |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        ratios = []
        for theirs in ffmpeg.cases:
            ours = next(
                (
                    c
                    for c in main.cases
                    if (c.chars, c.fmt, c.concurrency)
                    == (theirs.chars, theirs.fmt, theirs.concurrency)
                ),
                None,
            )
            if ours is None:
                continue
            over = [med(c, "first_ms") - med(c, "first_ms", "engine") for c in (ours, theirs)]
            totals = [med(c, "total_ms") for c in (ours, theirs)]
            ratios.append(totals[0] / totals[1])
            lines.append(
                f"| {ours.chars} | {ours.fmt} | {ours.concurrency} | {over[0]:+.1f} / "
                f"{over[1]:+.1f} | {totals[0]:.0f} / {totals[1]:.0f} | "
                f"{totals[0] / totals[1]:.2f} |"
            )
        if ratios:
            lines += ["", f"Median total ratio PyAV ÷ ffmpeg: {statistics.median(ratios):.2f}."]
        parts.append("\n".join(lines))
    thread = _leg(legs, "PARLEY_ESPEAK_PROCESSES")
    if thread is not None:
        lines = [
            "### eSpeak worker processes against the in-process thread (same run)",
            "",
            "Raw formats; the engine column of each leg is the same setup called directly "
            "(worker processes / one thread) in the bench process.",
            "",
            "| chars | format | conc. | engine first chunk ms processes / thread | first "
            "byte ms processes / thread | overhead ms processes / thread | engine full ms "
            "processes / thread |",
            "|---:|---|---:|---:|---:|---:|---:|",
        ]
        for theirs in thread.cases:
            ours = next(
                (
                    c
                    for c in main.cases
                    if (c.chars, c.fmt, c.concurrency)
                    == (theirs.chars, theirs.fmt, theirs.concurrency)
                ),
                None,
            )
            if ours is None:
                continue

            def pair(attribute: str, where: str, a: Case = ours, b: Case = theirs) -> str:
                return f"{med(a, attribute, where):.1f} / {med(b, attribute, where):.1f}"

            over = [med(c, "first_ms") - med(c, "first_ms", "engine") for c in (ours, theirs)]
            lines.append(
                f"| {ours.chars} | {ours.fmt} | {ours.concurrency} | "
                f"{pair('first_ms', 'engine')} | {pair('first_ms', 'server')} | "
                f"{over[0]:+.1f} / {over[1]:+.1f} | {pair('total_ms', 'engine')} |"
            )
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + ("\n" if parts else "")


def parse_legs(text: str) -> list[Leg]:
    """Legs back from a section this bench printed (its tables hold every median), so a
    run can be re-rendered (``--render-from``) without running it again."""
    legs: list[Leg] = []
    for block in re.split(r"^### ", text, flags=re.MULTILINE)[1:]:
        title = block.splitlines()[0].strip()
        command = re.search(r"^`([^`]*daphne [^`]*)`", block, re.MULTILINE)
        if command is None:
            continue
        words = command.group(1).split()
        env = dict(word.split("=", 1) for word in words if "=" in word)
        cases = []
        for row in re.findall(r"^\| (\d+) \| (\w+) \| (\d) \|(.*)\|$", block, re.MULTILINE):
            chars, fmt, concurrency, rest = row
            cells = [cell.strip() for cell in rest.split("|")]
            inside = [float(x) for x in cells[-1].split(" / ")]
            case = Case(int(chars), fmt, int(concurrency))
            case.engine = [Sample(float(cells[0]), float(cells[4]))]
            case.server = [Sample(float(cells[1]), float(cells[5]), 0, inside[0], inside[1])]
            cases.append(case)
        memory: dict[str, tuple[float, float]] = {}
        line = re.search(r"^- Memory growth.*: (.*) — .*idle RSS: (.*)\)$", block, re.MULTILINE)
        if line is not None:
            growths = dict(re.findall(r"(\w+) ([\d.]+) MiB", line.group(1)))
            idles = dict(re.findall(r"(\w+) ([\d.]+) MiB", line.group(2)))
            memory = {fmt: (float(idles[fmt]), float(growths[fmt])) for fmt in growths}
        legs.append(Leg(title, words[-1], cases, memory, env))
    return legs


def section(legs: list[Leg], command: str, machine: dict | None = None) -> str:
    machine = machine or machine_info()
    parts = []
    for leg in legs:
        idle = ", ".join(f"{fmt} {idle:.0f} MiB" for fmt, (idle, _) in leg.memory.items())
        parts.append(
            f"### {leg.title}\n\n`"
            + " ".join([*(f"{k}={v}" for k, v in leg.env.items()), "daphne", leg.app])
            + "`\n\n"
            + "\n".join(verdicts(leg.cases, leg.memory))
            + (f" (idle RSS: {idle})" if idle else "")
            + f"\n\n{table(leg.cases)}\n"
        )
    body = "\n".join(parts) + "\n" + comparisons(legs)
    return f"""{HEADING}

`POST /v1/audio/speech` (model `tts-1`, voice `alloy`, the default engine eSpeak NG) on one
daphne with the embedded SQLite database, against the same engine called directly in the
bench process, interleaved in the same run on the same text at the same concurrency. English
prose of 100, 1,000 and 4,000 characters; medians. "First byte" is the first body byte at
the client (http.client, new connection per request, so it includes connecting); "engine
first chunk" is the first PCM buffer out of `EspeakEngine.synthesize`, "engine full" its
last. The last column is what the server itself recorded on the job: its engine's first
chunk and its first byte written, both from the job's start. pcm and the compressed formats
are resampled to OpenAI's 24 kHz (wav keeps 22,050 Hz). As wired, eSpeak NG runs in
`PARLEY_ESPEAK_PROCESSES` worker processes (default: the core count) and the compressed
formats are encoded in the server process by PyAV, opened while the engine works on its first
chunk; flac is sent whole when it is complete (its header needs the length and MD5), so its
first byte is the whole synthesis by design. The other legs run their own daphne in the same
run: the compressed formats through one ffmpeg process per request
(`PARLEY_SPEECH_ENCODER=ffmpeg`, the yardstick for the encoder), and pcm/wav with eSpeak in a
thread of the server (`PARLEY_ESPEAK_PROCESSES=0`, with `--espeak-thread`). The target (issue
11 §3): first byte within 10 ms of the engine's first chunk in every format, at concurrency
1 and 4.

- Machine: {machine["cpu"]}, {machine["nproc"]} cores, {machine["ram"]} RAM; Python
  {machine["python"]}; commit {machine["commit"]}. The machine is shared: other benches and
  test suites may have run at the same time.
- Date: {machine["date"]}
- Command: `{command}`

{body}
Memory: the daphne process's RSS sampled every 2 ms while one 4,000-character request
streams to a client reading as fast as it can, minus its RSS just before. Daphne applies no
backpressure to the application: a client that reads slower than the engine speaks makes
daphne hold the unread audio (about 48 KB per second of 24 kHz pcm). Concurrency 4 on these
{machine["nproc"]} cores: each eSpeak worker process serves its jobs round robin by pieces;
the engine column at concurrency 4 runs four threads against the same engine setup (its
own worker processes) the same way.
"""


def replace_section(path: Path, heading: str, text: str) -> None:
    # Other sections belong to other benches: read right before writing, touch only ours.
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    ours = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if ours.search(current):
        current = ours.sub(lambda _: text.rstrip("\n") + "\n\n", current)
    else:
        current = current.rstrip("\n") + "\n\n" + text
    path.write_text(current.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=5, help="samples per case at c=1")
    parser.add_argument("--quick", action="store_true", help="2 samples per case")
    parser.add_argument("--write-docs", action="store_true", help=f"update {HEADING!r}")
    parser.add_argument(
        "--render-from",
        metavar="FILE",
        help="re-render a section this bench printed (with the comparisons), no run",
    )
    parser.add_argument(
        "--espeak-thread",
        action="store_true",
        help="add a leg with eSpeak in a thread of the server (PARLEY_ESPEAK_PROCESSES=0)",
    )
    parser.add_argument(
        "--no-ffmpeg", action="store_true", help="skip the ffmpeg-pipe leg (the encoder yardstick)"
    )
    parser.add_argument(
        "--strategies",
        action="store_true",
        help=f"compare streaming_strategy adaptive with sentence ({STRATEGY_HEADING!r})",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    command = shlex.join([".venv/bin/python", "-m", "bench.tts", *sys.argv[1:]])
    if args.strategies:
        text = strategy_section(run_strategies(args), command)
        print(text)
        if args.write_docs:
            replace_section(DOCS, STRATEGY_HEADING, text)
            log(f"wrote the {STRATEGY_HEADING!r} section of {DOCS}")
        return
    if args.render_from:
        saved = Path(args.render_from).read_text()
        found = re.search(r"commit (\S+)", saved)
        date = re.search(r"^- Date: (.*)$", saved, re.MULTILINE)
        found_command = re.search(r"^- Command: `(.*)`$", saved, re.MULTILINE)
        machine = {
            **machine_info(),
            **({"commit": found.group(1).rstrip(";")} if found else {}),
            **({"date": date.group(1)} if date else {}),
        }
        text = section(
            parse_legs(saved), found_command.group(1) if found_command else command, machine
        )
        print(text)
        if args.write_docs:
            replace_section(DOCS, HEADING, text)
            log(f"wrote the {HEADING!r} section of {DOCS}")
        return
    legs = []
    app = "config.asgi:application"
    plan: list[tuple[str, list[str], tuple[str, ...], dict[str, str]]] = [
        ("As wired (config.asgi, PyAV encoder)", list(FORMATS), ("pcm", "mp3"), {}),
    ]
    if not args.no_ffmpeg:
        # The yardstick for the encoder: the same compressed formats through one ffmpeg
        # process per response, on its own daphne in the same run.
        env = {"PARLEY_SPEECH_ENCODER": "ffmpeg"}
        plan.append(("ffmpeg pipe (PARLEY_SPEECH_ENCODER=ffmpeg)", list(COMPRESSED), (), env))
    if args.espeak_thread:
        # The in-process eSpeak thread (no worker processes), for the raw formats.
        env = {"PARLEY_ESPEAK_PROCESSES": "0"}
        plan.append(("eSpeak in a thread (PARLEY_ESPEAK_PROCESSES=0)", RAW, (), env))
    for title, formats, memory_formats, env in plan:
        formats = [fmt for fmt in formats if fmt in args.formats]
        if formats:
            cases, memory = run(args, app, formats, memory_formats=memory_formats, env=env)
            legs.append(Leg(title, app, cases, memory, env))
    text = section(legs, command)
    print(text)
    if args.write_docs:
        replace_section(DOCS, HEADING, text)
        log(f"wrote the {HEADING!r} section of {DOCS}")


if __name__ == "__main__":
    main()
