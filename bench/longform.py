"""Long text jobs (issue 10 §3): characters per second and time to the first piece.

    .venv/bin/python -m bench.longform                 # 50,000 characters, a few minutes
    .venv/bin/python -m bench.longform --chars 5000    # a smoke run
    .venv/bin/python -m bench.longform --write-docs    # also (re)writes "## Long text jobs"
                                                       # in docs/benchmarks.md, nothing else

One daphne (embedded SQLite in a temp PARLEY_VAR_DIR) serves Parley. The bench POSTs a
text of --chars characters of English to /v1/audio/speech/long (wav), polls the job and
reports: time from the 202 to the first finished piece, time to `completed` (the file
joined), characters per second and seconds of audio per second. The yardstick is the same
text in one plain synthesis call of the same engine (eSpeak NG through speech.tts, in the
bench process), in the same run.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import time
from pathlib import Path

from bench.core import machine_info
from bench.tts import PROSE, replace_section, start_server
from tests.support.servers import PROJECT_ROOT

DOCS = PROJECT_ROOT / "docs" / "benchmarks.md"
HEADING = "## Long text jobs"


def text_of(chars: int) -> str:
    text = ""
    while len(text) < chars:
        text += PROSE
    cut = text[:chars]
    # End on a sentence: the last sentence whole.
    return cut[: cut.rfind(". ") + 1] if ". " in cut else cut


def _request(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    conn.request(method, path, body=data, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, payload


def long_job(port: int, text: str) -> dict:
    started = time.perf_counter()
    status, body = _request(
        port, "POST", "/v1/audio/speech/long", {"input": text, "response_format": "wav"}
    )
    assert status == 202, body
    job_id = json.loads(body)["job_id"]
    first = None
    while True:
        job = json.loads(_request(port, "GET", f"/v1/audio/speech/long/{job_id}")[1])
        now = time.perf_counter() - started
        if first is None and job["progress"]["completed_chunks"] >= 1:
            first = now
        if job["status"] in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["status"] == "completed", job
    return {
        "pieces": job["progress"]["total_chunks"],
        "first_piece_s": first,
        "first_piece_server_s": job["metadata"]["first_chunk_seconds"],
        "total_s": now,
        "audio_s": job["metadata"]["output_duration_seconds"],
        "bytes": job["metadata"]["output_size_bytes"],
    }


def plain(text: str) -> dict:
    """The yardstick: the whole text in one synthesis call of the same engine (eSpeak NG
    through speech.tts, in this process; the HTTP endpoints take at most 4,096 characters)."""
    from speech.tts.espeak import EspeakEngine

    engine = EspeakEngine()
    started = time.perf_counter()
    first = None
    size = 0
    for chunk in engine.synthesize(text, voice="en-us"):
        if first is None and chunk.pcm:
            first = time.perf_counter() - started
        size += len(chunk.pcm)
    total = time.perf_counter() - started
    return {"first_byte_s": first, "total_s": total, "audio_s": size / (engine.sample_rate * 2)}


def section(chars: int, job: dict, yardstick: dict | None, command: str) -> str:
    info = machine_info()
    lines = [
        HEADING,
        "",
        f"`{command}` on {info.get('cpu', 'this machine')} (eSpeak NG, embedded SQLite, one "
        f"daphne): one long text job of {chars:,} characters ({job['pieces']} pieces of up "
        "to 500 characters) as WAV, polled every 50 ms, against the same text in one plain "
        "synthesis call of the same engine (eSpeak NG through speech.tts in the bench "
        "process: the HTTP endpoints take at most 4,096 characters).",
        "",
        "| | first piece / first byte | done | characters/s | audio s per s |",
        "|---|---|---|---|---|",
        f"| long text job | {job['first_piece_s']:.2f} s | {job['total_s']:.1f} s | "
        f"{chars / job['total_s']:,.0f} | {job['audio_s'] / job['total_s']:.1f} |",
    ]
    if yardstick is not None:
        lines.append(
            f"| one plain synthesis call | {yardstick['first_byte_s']:.2f} s | "
            f"{yardstick['total_s']:.1f} s | {chars / yardstick['total_s']:,.0f} | "
            f"{yardstick['audio_s'] / yardstick['total_s']:.1f} |"
        )
    lines += [
        "",
        f"The job's file holds {job['audio_s']:,.1f} s of audio ({job['bytes']:,} bytes). "
        "Not profiled: per piece the job adds a SpeechJob record, an fsynced file and "
        "a row, and at the end the pieces are read and written again as one file; the "
        "2-core machine was shared with other work while this ran.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chars", type=int, default=50_000)
    parser.add_argument("--no-yardstick", action="store_true")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    text = text_of(args.chars)
    with tempfile.TemporaryDirectory(prefix="bench-long-") as var_dir:
        server = start_server(Path(var_dir), "config.asgi:application")
        try:
            job = long_job(server.port, text)
            print(json.dumps(job), flush=True)
            yardstick = None if args.no_yardstick else plain(text)
            print(json.dumps(yardstick), flush=True)
        finally:
            server.stop()
    command = "python -m bench.longform" + (
        "" if args.chars == 50_000 else f" --chars {args.chars}"
    )
    text_out = section(len(text), job, yardstick, command)
    print(text_out)
    if args.write_docs:
        replace_section(DOCS, HEADING, text_out)


if __name__ == "__main__":
    main()
