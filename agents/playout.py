"""The listener's side of an agent reply: pacing, the playhead and what was heard.

Pure Python (no Django). The server never trusts a client's report of what it played: it
models the listener's playhead exactly as the core does for spectators (DESIGN invariant 4,
``streams.audio.advance_playhead``): each chunk starts playing at ``max(playhead, send time)``
and the playhead moves on by its duration, so an underrun (a slow engine) is accounted for.
From that model come the pacing (audio goes out at most ``lead_s`` ahead of the playhead, so a
barge-in has little to flush and a slow client cannot pile audio up), ``heard_ms`` at any
moment, and ``heard_text``: the words played by then.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field

from streams.audio import advance_playhead, heard_seconds

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


@dataclass(frozen=True)
class SpokenSpan:
    """A piece of the reply synthesized on its own (a sentence) and where it sits in the audio.

    ``text_start``/``text_end`` index the reply text; ``audio_start``/``audio_end`` are byte
    offsets into the reply's audio; ``words`` are (text offset, audio offset) pairs of the
    engine's word marks, both absolute, in order (empty when the engine gives none).
    """

    text_start: int
    text_end: int
    audio_start: int
    audio_end: int
    words: tuple[tuple[int, int], ...] = ()


_WORD_END = re.compile(r"\S+")


def _end_of_word(text: str, at: int, limit: int) -> int:
    match = _WORD_END.match(text, at, limit)
    return match.end() if match else at


def heard_text(text: str, spans: list[SpokenSpan], heard_bytes: int) -> str:
    """The reply's words whose audio had started playing by ``heard_bytes``.

    With word marks (eSpeak NG reports them) a word counts once its first sample has played;
    without, the heard fraction of the span is applied to its characters and a word counts
    once its first character is within that fraction. Returns a prefix of ``text`` ending at
    a word boundary, stripped: "" when nothing was played, the spans' text when all was.
    """
    if not spans or heard_bytes <= 0:
        return ""
    if heard_bytes >= spans[-1].audio_end:
        # Everything synthesized so far was heard: the text of those spans, not more (the
        # responder may have written sentences that were never spoken).
        return text[: spans[-1].text_end].strip()
    cut = 0
    for span in spans:
        if heard_bytes <= span.audio_start:
            break
        if heard_bytes >= span.audio_end:
            cut = span.text_end
            continue
        if span.words:
            offsets = [audio for _, audio in span.words]
            index = bisect.bisect_left(offsets, heard_bytes)  # words starting before heard
            if index:
                cut = _end_of_word(text, span.words[index - 1][0], span.text_end)
        else:
            fraction = (heard_bytes - span.audio_start) / max(1, span.audio_end - span.audio_start)
            limit = span.text_start + fraction * (span.text_end - span.text_start)
            for word in _WORD_END.finditer(text, span.text_start, span.text_end):
                if word.start() >= limit:
                    break
                cut = word.end()
        break
    return text[:cut].strip()
