"""Compare the memory dumps of config/server.py's PARLEY_MEMORY_DUMP hook (bench/soak.py's
`--memory-dump DIR`): per worker, RSS against what Python and malloc hold, the object types
that grew, and the tracemalloc tracebacks that grew.

    .venv/bin/python -m bench.memdiff /tmp/soak-mem              # first dump after idle → last
    .venv/bin/python -m bench.memdiff /tmp/soak-mem --since 1 --top 25
"""

from __future__ import annotations

import argparse
import json
import sys
import tracemalloc
from collections import defaultdict
from pathlib import Path

MIB = 2**20


def load(directory: Path) -> dict[int, dict[int, dict]]:
    """{pid: {n: dump}} of every `<pid>-<n>.json` in `directory`."""
    found: dict[int, dict[int, dict]] = defaultdict(dict)
    for path in directory.glob("*-*.json"):
        pid, n = (int(part) for part in path.stem.split("-"))
        found[pid][n] = json.loads(path.read_text())
    return found


def row(n: int, dump: dict) -> str:
    kib = dump["proc_kib"]
    traced = dump["tracemalloc"]
    heap = dump["mallinfo2"] or {}
    return (
        f"  dump {n}: RSS {kib['VmRSS'] / 1024:6.1f} MiB "
        f"(anon {kib.get('RssAnon', 0) / 1024:6.1f}, peak {kib['VmHWM'] / 1024:6.1f}) | traced "
        f"{(traced['current'] / MIB) if traced else float('nan'):6.1f} MiB | malloc in use "
        f"{heap.get('uordblks', 0) / MIB:6.1f}, free kept {heap.get('fordblks', 0) / MIB:6.1f}, "
        f"heap {heap.get('arena', 0) / MIB:6.1f}, mmapped {heap.get('hblkhd', 0) / MIB:5.1f} MiB | "
        f"pymalloc blocks {dump['pymalloc_blocks']:,} | objects {dump['objects']:,} "
        f"(gc freed {dump['gc_collected']})" + pymalloc_row(dump.get("pymalloc"))
    )


def pymalloc_row(stats: dict[str, int] | None) -> str:
    """pymalloc's arenas (1 MiB each, mmapped by Python itself, not in malloc's totals):
    how much of them live objects use, and how much is free inside arenas still held."""
    if not stats:
        return ""
    arenas = stats["arenas allocated current"]
    used = stats["bytes in allocated blocks"] / MIB
    free = stats["bytes in available blocks"] / MIB + stats["unused pools"] * 16384 / MIB
    return (
        f"\n          pymalloc: {arenas} arenas of 1 MiB (highwater "
        f"{stats['arenas highwater mark']}), {used:.1f} MiB in live blocks, {free:.1f} MiB "
        f"free inside them ({100 * free / max(1, arenas):.0f}%)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path)
    parser.add_argument("--since", type=int, default=2, help="dump to compare from (2: warm)")
    parser.add_argument("--until", type=int, default=None, help="dump to compare to (last)")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--frames", type=int, default=6, help="frames shown per traceback")
    args = parser.parse_args(argv)
    for pid, dumps in sorted(load(args.directory).items()):
        print(f"worker pid {pid}")
        for n in sorted(dumps):
            print(row(n, dumps[n]))
        since = args.since if args.since in dumps else min(dumps)
        until = args.until if args.until is not None else max(dumps)
        if since == until or until not in dumps:
            continue
        before, after = dumps[since]["by_type"], dumps[until]["by_type"]
        grown = sorted(
            ((after.get(t, 0) - before.get(t, 0), t) for t in set(before) | set(after)),
            reverse=True,
        )
        print(f"  object types, dump {since} → {until}:")
        for delta, name in grown[: args.top]:
            print(f"    {delta:+8,} {name} ({after.get(name, 0):,})")
        snap_a = args.directory / f"{pid}-{since}.tracemalloc"
        snap_b = args.directory / f"{pid}-{until}.tracemalloc"
        if not (snap_a.exists() and snap_b.exists()):
            continue
        old = tracemalloc.Snapshot.load(str(snap_a))
        new = tracemalloc.Snapshot.load(str(snap_b))
        for key in ("filename", "traceback"):
            stats = new.compare_to(old, key)
            total = sum(s.size_diff for s in stats)
            print(f"  tracemalloc by {key}, dump {since} → {until}: {total / MIB:+.2f} MiB net")
            for stat in stats[: args.top]:
                print(
                    f"    {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7,} blocks "
                    f"(now {stat.size / 1024:9.1f} KiB)"
                )
                if key == "traceback":
                    for line in stat.traceback.format(limit=args.frames, most_recent_first=True):
                        print(f"        {line}")
                else:
                    print(f"        {stat.traceback[0].filename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
