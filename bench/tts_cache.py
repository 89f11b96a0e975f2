"""Synthesis cache (issue 10 §6): a hit against a miss, and against a plain file.

    .venv/bin/python -m bench.tts_cache                # ~1 min; prints a Markdown section
    .venv/bin/python -m bench.tts_cache --write-docs   # also (re)writes its section of
                                                       # docs/benchmarks.md, nothing else

One daphne (embedded SQLite in a temp PARLEY_VAR_DIR, the cache on in it) serves Parley.
For each text size and format, each round POSTs a text never asked before (a miss: eSpeak NG
synthesizes, the bytes are stored when the response ends), then the same request again (a
hit), then GETs the stored entry's file through a plain Django FileResponse on the same
daphne (the yardstick: what reading those bytes from disk costs anyway). The client times
the first body byte and the last (http.client, a new connection per request). In the same
process, it also times the cache's directory scan (what every store does to evict) for
1,000 and 10,000 entries.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.core import machine_info
from bench.tts import DOCS, replace_section, text_of
from tests.support.servers import PROJECT_ROOT, DaphneProcess

HEADING = "## Speech synthesis cache"
FORMATS = ("pcm", "mp3", "opus", "flac")
SIZES = (60, 1000)


def log(message: str) -> None:
    print(f"[bench.tts_cache] {message}", file=sys.stderr, flush=True)


def timed(port: int, method: str, path: str, body: dict | None = None) -> tuple[float, float, dict]:
    """(first byte ms, last byte ms, headers) of one request on a new connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.connect()
    start = time.perf_counter()
    payload = json.dumps(body) if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    connection.request(method, path, body=payload, headers=headers)
    response = connection.getresponse()
    first = response.read(1)
    first_at = time.perf_counter()
    rest = response.read()
    done_at = time.perf_counter()
    connection.close()
    if response.status != 200 or not first:
        raise RuntimeError(f"{path}: HTTP {response.status}: {(first + rest)[:300]!r}")
    return (first_at - start) * 1000, (done_at - start) * 1000, dict(response.getheaders())


def newest_entry(directory: Path, before: set[Path]) -> Path:
    for _ in range(500):  # stored in a thread right after the response ended
        new = set(directory.glob("*.tts")) - before
        if new:
            return new.pop()
        time.sleep(0.01)
    raise RuntimeError("the miss was not stored")


def scan_ms(count: int, size: int = 20_000) -> float:
    from speech.cache import AudioCache, key_of

    with tempfile.TemporaryDirectory(prefix="parley-bench-cache-scan-") as directory:
        store = AudioCache(directory, max_bytes=1 << 40, max_entry_bytes=1 << 30)
        audio = b"\0" * size
        for n in range(count):
            (Path(directory) / f"{key_of({'n': n})}.tts").write_bytes(audio)
        store.evict()  # warm the dentry cache, as a live directory is
        runs = []
        for _ in range(5):
            start = time.perf_counter()
            store.evict()
            runs.append((time.perf_counter() - start) * 1000)
        return statistics.median(runs)


def run(args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="parley-bench-tts-cache-") as var_dir:
        var = Path(var_dir)
        cache_dir = var / "tts-cache"
        env = {
            "DJANGO_SETTINGS_MODULE": "bench.tts_cache_settings",
            "DATABASE_URL": None,
            "REDIS_URL": None,
            "PARLEY_VAR_DIR": str(var),
            "PARLEY_TTS_CACHE_DIR": str(cache_dir),
            "PARLEY_TTS_CACHE_MAX_BYTES": str(1 << 30),
        }
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=PROJECT_ROOT,
            env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
            check=True,
        )
        server = DaphneProcess(env=env, name="daphne-bench-tts-cache")
        try:
            for fmt in FORMATS:  # warm up: engine built, ffmpeg paged in
                timed(
                    server.port,
                    "POST",
                    "/v1/audio/speech",
                    {"input": "Warm up.", "response_format": fmt},
                )
            take = 0
            for chars in args.sizes:
                for fmt in FORMATS:
                    samples: dict[str, list[tuple[float, float]]] = {
                        "miss": [],
                        "hit": [],
                        "file": [],
                    }
                    nbytes = 0
                    for _ in range(args.repeats):
                        take += 1
                        body = {
                            "input": f"Take {take}. " + text_of(chars),
                            "voice": "alloy",
                            "response_format": fmt,
                        }
                        before = set(cache_dir.glob("*.tts"))
                        *miss, headers = timed(server.port, "POST", "/v1/audio/speech", body)
                        assert headers["X-Cache"] == "MISS", headers
                        entry = newest_entry(cache_dir, before)
                        *hit, headers = timed(server.port, "POST", "/v1/audio/speech", body)
                        assert headers["X-Cache"] == "HIT", headers
                        (var / "yardstick.bin").write_bytes(entry.read_bytes())
                        *plain, _ = timed(server.port, "GET", "/bench/file")
                        nbytes = entry.stat().st_size
                        for name, sample in (("miss", miss), ("hit", hit), ("file", plain)):
                            samples[name].append(tuple(sample))
                    row = {"chars": chars, "fmt": fmt, "bytes": nbytes}
                    for name, values in samples.items():
                        row[f"{name}_first"] = statistics.median(v[0] for v in values)
                        row[f"{name}_total"] = statistics.median(v[1] for v in values)
                    rows.append(row)
                    log(
                        f"{chars:>5} chars {fmt:>4}: miss {row['miss_first']:.1f}/"
                        f"{row['miss_total']:.1f} ms, hit {row['hit_first']:.1f}/"
                        f"{row['hit_total']:.1f} ms, file {row['file_first']:.1f}/"
                        f"{row['file_total']:.1f} ms"
                    )
        finally:
            server.stop()
    return rows


def section(rows: list[dict], scans: dict[int, float], command: str, repeats: int) -> str:
    machine = machine_info()
    lines = [
        "| text | format | entry | miss: first byte / total | hit: first byte / total | "
        "file (FileResponse): first byte / total | hit total ÷ miss total |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['chars']:,} chars | {row['fmt']} | {row['bytes'] / 1024:,.0f} KiB | "
            f"{row['miss_first']:.1f} / {row['miss_total']:.1f} ms | "
            f"{row['hit_first']:.1f} / {row['hit_total']:.1f} ms | "
            f"{row['file_first']:.1f} / {row['file_total']:.1f} ms | "
            f"{row['hit_total'] / row['miss_total']:.2f} |"
        )
    scan = ", ".join(f"{count:,} entries {ms:.1f} ms" for count, ms in scans.items())
    return f"""{HEADING}

Issue 10 §6, measured by `bench/tts_cache.py`. `POST /v1/audio/speech` (voice `alloy`,
eSpeak NG) on one daphne with the embedded SQLite database and the cache on
([speech.md](speech.md#cache)). Each round asks a text never asked before (**miss**:
synthesis, encoding, the bytes stored after the response), then the same request (**hit**:
the stored bytes, a SpeechJob recorded as any), then fetches the stored entry's file through
a plain Django `FileResponse` on the same daphne (**file**: the yardstick, what reading
those bytes from disk and sending them costs anyway). Medians of {repeats} rounds; times at
the client (http.client, a new connection per request, so they include connecting). The
short text is a game character's line (~60 characters), the other 1,000 characters of prose.

- Machine: {machine["cpu"]}, {machine["nproc"]} cores, {machine["ram"]} RAM; Python
  {machine["python"]}; commit {machine["commit"]}. The machine is shared: other benches and
  test suites may have run at the same time.
- Date: {machine["date"]}
- Command: `{command}`

{chr(10).join(lines)}

A hit still resolves the voice and model (a database read or two, as synthesis does, so
the same request is refused the same way), reads the entry in a thread and records its job;
the file yardstick does none of that. Every store scans the cache directory to evict (one
`stat` per entry, in a thread after the response): {scan}.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--write-docs", action="store_true", help=f"update {HEADING!r}")
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.tts_cache_settings")
    import django

    django.setup()
    command = shlex.join([".venv/bin/python", "-m", "bench.tts_cache", *sys.argv[1:]])
    rows = run(args)
    scans = {count: scan_ms(count) for count in (1_000, 10_000)}
    text = section(rows, scans, command, args.repeats)
    print(text)
    if args.write_docs:
        replace_section(DOCS, HEADING, text)
        log(f"wrote the {HEADING!r} section of {DOCS}")


if __name__ == "__main__":
    main()
