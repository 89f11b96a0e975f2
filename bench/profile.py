"""Summarize a py-spy raw (collapsed stack) profile written by `bench.core --profile DIR`.

    .venv/bin/python -m bench.profile DIR/embedded-ingest-0.txt [--top 30] [--focus chunk_ingest]

Prints, per thread, its share of the samples; then the functions with the most inclusive
samples (time spent in them or below) and the most self samples (the leaf frame), both as a
percentage of all samples. Frames are named `function (file)`, line numbers dropped, so the
numbers add up per function rather than per line. With --focus, only stacks that pass through
a frame whose function name contains that text are counted, and percentages are of those.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")
_SITE = re.compile(r"^.*?/(?:site-packages|lib/python3\.\d+)/")


def frame_name(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    path = _SITE.sub("", match.group("file"))
    return f"{match.group('func')} ({path})"


def load(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames root-first, samples) per distinct stack."""
    stacks = []
    for line in path.read_text().splitlines():
        body, _, count = line.rpartition(" ")
        if not body or not count.isdigit():
            continue
        thread, *frames = body.split(";")
        name = thread.split(":", 1)[1].strip() if ":" in thread else thread
        stacks.append((re.sub(r"_\d+$", "", name), [frame_name(f) for f in frames], int(count)))
    return stacks


def report(path: Path, *, top: int = 30, focus: str | None = None) -> str:
    stacks = load(path)
    if focus:
        stacks = [s for s in stacks if any(focus in f.split(" (")[0] for f in s[1])]
    total = sum(count for _, _, count in stacks) or 1
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    for thread, frames, count in stacks:
        threads[thread] += count
        for name in set(frames):
            inclusive[name] += count
        if frames:
            leaf[frames[-1]] += count
    lines = [f"{path.name}: {total} samples" + (f" through {focus!r}" if focus else "")]
    lines.append("threads:")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in threads.most_common()]
    lines.append(f"inclusive (top {top}):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines.append(f"self (top {top}):")
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--focus", help="only stacks through a function containing this")
    args = parser.parse_args(argv)
    for path in args.files:
        print(report(path, top=args.top, focus=args.focus))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
