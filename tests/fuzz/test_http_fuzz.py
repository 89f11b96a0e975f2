"""schemathesis against /openapi.json on a real daphne (the current leg's database).

Every generated request must be answered without a server error and exactly as the schema
says: a documented status code, a documented content type, a body matching its schema,
refusal of schema-violating input, acceptance of schema-valid input, and 401 without the key
on every operation that needs one (schemathesis's default checks, all on). The seed is fixed,
so a CI failure reproduces with `pytest tests/fuzz/test_http_fuzz.py`; `python -m bench.fuzz`
is the longer release run.

schemathesis runs as its CLI (`st run`), as a user would: its pytest loader for a schema
served by a fixture does not run on pytest 9 (it sets the removed `Node._nodeid`).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from config.http_ranges import RANGED_PATHS
from tests.support.parley_server import FuzzServer

# The run itself is bounded by its example budget (about 90 s a leg on 2 idle cores); the
# timeout only catches a hang, with room for a loaded CI machine.
pytestmark = pytest.mark.timeout(600)

SEED = 20261130
# Examples of the fuzzing phase per operation; the coverage phase adds its own boundary and
# negative cases, the stateful phase its chains of linked calls. Sized for ~90 s a leg on
# 2 cores.
MAX_EXAMPLES = 12

# Operations whose 503 is the documented answer to a valid request on this deployment, not a
# fault: a request may name an engine ("openai") that no server is configured for here.
ENGINE_CHOICE_PATHS = (
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
    "/audio/speech",
    "/v1/audio/speech/stream",
    "/audio/speech/stream",
    "/v1/audio/speech/upload",
    "/audio/speech/upload",
    "/v1/audio/speech/stream/upload",
    "/audio/speech/stream/upload",
)


# Operations where a schema-valid request may still be refused (400, or 422 for text that
# speaks nothing) for a reason JSON Schema cannot carry: which voice names exist (per engine,
# plus stored ones), text without NUL or lone surrogates (the schema's pattern says so, but
# schemathesis's regex engine drops patterns with surrogate escapes), audio that decodes,
# a session's secret key, PCM whose length fits the frame. Every other check stays as is, and
# so does this one for every other status.
CONTENT_CHECKED = {
    "/v1/audio/speech": "voice names, text, no_audio (422)",
    "/audio/speech": "voice names, text, no_audio (422)",
    "/v1/audio/speech/stream": "voice names, text, no_audio (422)",
    "/audio/speech/stream": "voice names, text, no_audio (422)",
    "/v1/audio/speech/upload": "voice names, text, no_audio (422), the sample",
    "/audio/speech/upload": "voice names, text, no_audio (422), the sample",
    "/v1/audio/speech/stream/upload": "voice names, text, no_audio (422), the sample",
    "/audio/speech/stream/upload": "voice names, text, no_audio (422), the sample",
    "/audio/stream": "voice names, text",
    "/v1/audio/speech/long": "voice names, text, no_audio (422)",
    "/api/rooms/{room}/say": "voice names, text",
    "/chat": "text",
    "/v1/voices": "a sample or an engine's preset, text",
    "/v1/voices/{name}": "an engine's preset, text",
    "/v1/audio/transcriptions": "the file must be decodable audio",
    "/streaming/force_stop": "the key of an open recording session",
    "/audio": "data: whole frames of the format; empty only with done",
}


# The bare speech routes are aliases: the same views and schema as their /v1/ routes, whose
# coverage phase (hundreds of syntheses each) already walks every boundary. The aliases keep
# their fuzzing and stateful phases, so the routing of each is still checked.
ALIASES = (
    "/audio/speech",
    "/audio/speech/stream",
    "/audio/speech/upload",
    "/audio/speech/stream/upload",
)


# DELETE on a long text job cancels it unless ?action=delete (the seed's semantics): the job
# is still there afterwards, which schemathesis's use-after-free check takes for a leak.
DELETE_CANCELS = (
    "/v1/audio/speech/long/{job_id}",
    "/v1/audio/speech/long/{job_id}/sse",
    "/v1/audio/speech/long/{job_id}/download",
)


def config_toml(*, api_key: str, seed: int = SEED) -> str:
    """schemathesis.toml for a run against a fuzz server (shared with bench/fuzz.py)."""
    lines = [
        f"seed = {seed}",
        "request-timeout = 60",
        "[headers]",
        f'Authorization = "Bearer {api_key}"',
        "[generation]",
        'mode = "all"',
    ]
    for path in ENGINE_CHOICE_PATHS:
        lines += [
            "[[operations]]",
            f'include-path = "{path}"',
            'checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", 503]',
        ]
    for path in ALIASES:
        lines += ["[[operations]]", f'include-path = "{path}"', "phases.coverage.enabled = false"]
    for path in DELETE_CANCELS:
        lines += [
            "[[operations]]",
            f'include-path = "{path}"',
            "checks.use_after_free.enabled = false",
        ]
    for path in CONTENT_CHECKED:
        lines += [
            "[[operations]]",
            f'include-path = "{path}"',
            "checks.positive_data_acceptance.expected-statuses = "
            '["2xx", "3xx", 400, 401, 403, 404, 409, 422, 429, "5xx"]',
        ]
    # A schema-valid Range may start past the end of a file whose size no schema can state:
    # there 416 is the documented answer (config/http_ranges.py), not a refused request.
    for path in RANGED_PATHS:
        lines += [
            "[[operations]]",
            f'include-path = "{path}"',
            "checks.positive_data_acceptance.expected-statuses = "
            '["2xx", "3xx", 401, 403, 404, 409, 416, 429, "5xx"]',
        ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class FuzzRun:
    exit_code: int
    output: str
    report: dict
    requests: int  # HTTP requests daphne answered during the run (its access log)
    seconds: float

    @property
    def test_cases(self) -> int:
        return int(self.report["test_cases"]["generated"])


_ACCESS_LINE = re.compile(r'"(?:GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|TRACE)\s', re.M)


def run_schemathesis(
    server: FuzzServer,
    workdir: Path,
    *,
    seed: int = SEED,
    max_examples: int = MAX_EXAMPLES,
    workers: int = 2,
    extra_args: tuple[str, ...] = (),
    timeout: float | None = None,
) -> FuzzRun:
    """`st run` against `server`'s /openapi.json; the JSON report and output are kept."""
    config_file = workdir / "schemathesis.toml"
    config_file.write_text(config_toml(api_key=server.api_key, seed=seed))
    before = len(_ACCESS_LINE.findall(server.daphne.log()))
    output = workdir / "output.txt"
    started = time.monotonic()
    with output.open("w") as sink:
        done = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "--config-file",
                str(config_file),
                "run",
                f"{server.url}/openapi.json",
                "--max-examples",
                str(max_examples),
                "--workers",
                str(workers),
                "--report",
                "json",
                "--report-json-path",
                str(workdir / "report.json"),
                "--no-color",
                *extra_args,
            ],
            cwd=workdir,
            stdout=sink,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=timeout,
        )
    seconds = time.monotonic() - started
    report = json.loads((workdir / "report.json").read_text())
    requests = len(_ACCESS_LINE.findall(server.daphne.log())) - before
    return FuzzRun(done.returncode, output.read_text(), report, requests, seconds)


def _unexplained_errors(run: FuzzRun) -> int:
    """CPython 3.11.7's `ast.parse` fails deep in a stack ("AST constructor recursion depth
    mismatch", a CPython 3.11 bug) when hypothesis describes a filter lambda of schemathesis's
    coverage phase: that operation's coverage phase stops, its other phases run. Not a
    finding about the server. Returns how many errors are not that one."""
    errors = sum(int(error.get("count", 1)) for error in run.report["errors"])
    return errors - run.output.count("SystemError: AST constructor recursion depth mismatch")


def test_every_answer_is_what_the_schema_says(fuzz_server: FuzzServer, tmp_path: Path) -> None:
    try:
        # One schemathesis worker: with a fixed seed the operations then run in one order
        # against one server state, so a CI failure reproduces (two workers interleave).
        run = run_schemathesis(fuzz_server, tmp_path, workers=1, timeout=540)
    except subprocess.TimeoutExpired:
        pytest.fail("schemathesis did not finish:\n" + (tmp_path / "output.txt").read_text())
    print(f"schemathesis: {run.test_cases} cases, {run.requests} requests, {run.seconds:.0f} s")
    assert run.report["failures"] == [], run.output
    assert _unexplained_errors(run) <= 0, run.output
    assert run.exit_code == 0 or run.report["errors"], run.output
    assert run.report["operations"]["tested"] == run.report["operations"]["selected"] > 30
    assert run.requests > 1000
