"""The listener's side of an agent reply: pacing, the playhead and what was heard.

Pure Python (no Django). The server never trusts a client's report of what it played: it
models the listener's playhead exactly as the core does for spectators (DESIGN invariant 4,
``streams.audio.advance_playhead``): each chunk starts playing at ``max(playhead, send time)``
and the playhead moves on by its duration, so an underrun (a slow engine) is accounted for.
From that model come the pacing (audio goes out at most ``lead_s`` ahead of the playhead, so a
barge-in has little to flush and a slow client cannot pile audio up), ``heard_ms`` at any
moment, and ``heard_text`` (streams/heard.py): the words played by then.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streams.audio import advance_playhead, heard_seconds
from streams.heard import SpokenSpan, heard_text

__all__ = ["Playout", "SpokenSpan", "heard_text"]


@dataclass
class Playout:
    """One reply's playhead on the server's clock (seconds from ``time.monotonic``-like)."""

    bytes_per_second: int  # of the output format: rate * channels * 2
    lead_s: float = 0.3
    spans: list[tuple[float, float]] = field(default_factory=list)  # (start, duration) per chunk
    playhead: float | None = None
    sent_bytes: int = 0

    def wait_s(self, now: float) -> float:
        """How long to wait before the next chunk may go out (0: send it now)."""
        if self.playhead is None:
            return 0.0
        return max(0.0, self.playhead - self.lead_s - now)

    def sent(self, n_bytes: int, now: float) -> float:
        """Record a chunk of ``n_bytes`` sent at ``now``; returns when it starts playing."""
        start, self.playhead = advance_playhead(self.playhead, now, n_bytes / self.bytes_per_second)
        self.spans.append((start, n_bytes / self.bytes_per_second))
        self.sent_bytes += n_bytes
        return start

    def heard_s(self, now: float) -> float:
        return heard_seconds(self.spans, now)

    def heard_bytes(self, now: float) -> int:
        """Bytes of audio played by ``now``, rounded down to a whole 16-bit sample."""
        if self.sent_bytes == 0:
            return 0
        heard = min(self.sent_bytes, int(self.heard_s(now) * self.bytes_per_second))
        return heard - heard % 2

    def playing(self, now: float) -> bool:
        return self.playhead is not None and self.playhead > now

    @property
    def duration_s(self) -> float:
        return self.sent_bytes / self.bytes_per_second
