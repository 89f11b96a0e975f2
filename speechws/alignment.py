"""Word timings of a synthesized piece: from the engine's marks, or proportional.

Pure Python (no Django). An engine may say where words (eSpeak NG) or sentences (Piper)
start in its audio (``speech.tts.Mark``); between and beyond those anchors, and for engines
that give none (a remote OpenAI-compatible server), a word's start is interpolated by
character position between the nearest known points, the piece's start (0 ms) and its end
(its audio duration).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["Word", "align_words", "words_of"]

_WORD = re.compile(r"\S+")


@dataclass(frozen=True, slots=True)
class Word:
    start: int  # character offsets into the piece's text
    end: int
    text: str
    start_ms: float  # from the start of the piece's audio
    end_ms: float
    exact: bool  # True: an engine mark; False: interpolated

    def as_dict(self, *, text_base: int, audio_base_ms: float) -> dict[str, object]:
        return {
            "text": self.text,
            "start": text_base + self.start,
            "end": text_base + self.end,
            "start_ms": round(audio_base_ms + self.start_ms, 1),
            "end_ms": round(audio_base_ms + self.end_ms, 1),
        }


def words_of(text: str) -> list[tuple[int, int]]:
    """(start, end) of each run of non-space characters."""
    return [match.span() for match in _WORD.finditer(text)]


def align_words(
    text: str, duration_ms: float, marks: Iterable[tuple[str, int, float]]
) -> tuple[list[Word], str]:
    """Each word of ``text`` with its start and end in ms, and the source of the timings.

    ``marks`` are ``(kind, text_offset, audio_ms)`` into this text and its audio. A word
    whose start carries a mark gets the mark's time; any other word is interpolated by
    character position between the nearest anchors. Times never decrease and never pass
    ``duration_ms``; a word ends where the next one starts (the last at ``duration_ms``).
    Source: ``"engine"`` when every word had a mark, ``"proportional"`` when none did,
    ``"mixed"`` otherwise.
    """
    spans = words_of(text)
    exact: dict[int, float] = {}
    anchors: dict[int, float] = {}  # text offset -> ms: the marks, then the two ends
    word_starts = [start for start, _end in spans]
    for _kind, offset, ms in marks:
        if not 0 <= offset <= len(text):
            continue
        ms = min(max(ms, 0.0), duration_ms)
        # A mark inside a word (after an opening quote, say) times that word's start.
        index = bisect.bisect_right(word_starts, offset) - 1
        if index >= 0 and offset < spans[index][1]:
            offset = word_starts[index]
        anchors.setdefault(offset, ms)
        if offset in word_starts:
            exact.setdefault(offset, ms)
    anchors.setdefault(0, 0.0)
    anchors[len(text)] = max(duration_ms, anchors.get(len(text), 0.0))
    positions = sorted(anchors)
    # Anchors must not run backwards in time (a mark out of order would make words overlap).
    times: list[float] = []
    for position in positions:
        times.append(max(anchors[position], times[-1] if times else 0.0))
    starts: list[tuple[float, bool]] = []
    for start, _end in spans:
        if start in exact:
            index = bisect.bisect_left(positions, start)
            starts.append((times[index], True))
            continue
        right = bisect.bisect_right(positions, start)
        left = right - 1
        if right >= len(positions):
            starts.append((times[left], False))
            continue
        p0, p1, t0, t1 = positions[left], positions[right], times[left], times[right]
        starts.append((t0 + (t1 - t0) * (start - p0) / (p1 - p0), False))
    words: list[Word] = []
    previous = 0.0
    for (start, end), (ms, is_exact) in zip(spans, starts, strict=True):
        ms = min(max(ms, previous), duration_ms)
        previous = ms
        words.append(Word(start, end, text[start:end], ms, 0.0, is_exact))
    for index, word in enumerate(words):
        following = words[index + 1].start_ms if index + 1 < len(words) else duration_ms
        words[index] = Word(
            word.start,
            word.end,
            word.text,
            word.start_ms,
            max(following, word.start_ms),
            word.exact,
        )
    if words and all(word.exact for word in words):
        source = "engine"
    elif any(word.exact for word in words):
        source = "mixed"
    else:
        source = "proportional"
    return words, source
