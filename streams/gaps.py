"""A stream's missing seqs as ranges, listed boundedly. Pure: no Django here.

One chunk with `seq: 2000000` leaves two million seqs missing below it; listed one by one
that was a 17 MB answer. Missing seqs are kept and answered as inclusive `[first, last]`
ranges, at most MAX_LISTED of them, with the exact count beside them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

# Ranges (and seqs, in the compatibility list) an answer or a stored stream lists at most.
MAX_LISTED = 100


@dataclass
class Gaps:
    """Missing seqs: the first `limit` ranges, ascending, and how many seqs are missing."""

    ranges: list[list[int]] = field(default_factory=list)
    count: int = 0
    limit: int = MAX_LISTED

    def add(self, first: int, last: int) -> None:
        """Note seqs first..last (inclusive) missing; calls must come in ascending order."""
        if last < first:
            return
        self.count += last - first + 1
        if self.ranges and self.ranges[-1][1] + 1 == first:
            self.ranges[-1][1] = last  # adjacent: one range
        elif len(self.ranges) < self.limit:
            self.ranges.append([first, last])

    def as_answer(self) -> dict[str, object]:
        """The fields of an acknowledgement or a stream: `missing_seqs` (the first
        MAX_LISTED missing seqs, the list this field was before ranges), `missing_ranges`
        and `missing_count`."""
        seqs: list[int] = []
        for first, last in self.ranges:
            take = min(last - first + 1, MAX_LISTED - len(seqs))
            seqs.extend(range(first, first + take))
            if len(seqs) >= MAX_LISTED:
                break
        return {"missing_seqs": seqs, "missing_ranges": self.ranges, "missing_count": self.count}


def gaps_in(
    present: Iterable[int], *, start: int, end: int, count: int, limit: int = MAX_LISTED
) -> Gaps:
    """The first `limit` ranges of start..end (inclusive) not in `present` (ascending seqs;
    those outside start..end are skipped). `count` is how many seqs are missing, which the
    caller knows from its counters: reading `present` stops at the `limit`-th range, so a
    stream of 100,000 chunks costs no more than the first gaps in it."""
    gaps = Gaps(limit=limit)
    expected = start
    for seq in present:
        if seq < expected:
            continue
        if seq > end:
            break
        gaps.add(expected, seq - 1)
        expected = seq + 1
        if len(gaps.ranges) >= limit:
            break
    else:
        gaps.add(expected, end)
    gaps.count = count
    return gaps
