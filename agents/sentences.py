"""Cut a streamed reply into sentences as its tokens arrive, so speech starts before it ends.

Pure Python (no Django). A voice agent synthesizes each sentence as soon as it is complete:
the first audio then waits for the first sentence, not for the whole answer. A clause that
runs on without a full stop is cut at a comma, semicolon or colon once it is long, so a
rambling language model does not hold the first audio back.
"""

from __future__ import annotations

import re

__all__ = ["SentenceSplitter"]

# End of a sentence: terminal punctuation, closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s)|\n\s*\n|\n")
_CLAUSE_END = re.compile(r"[,;:\u2014](?=\s)")
_ABBREVIATIONS = frozenset(
    [
        "mr",
        "mrs",
        "ms",
        "dr",
        "prof",
        "sr",
        "jr",
        "st",
        "vs",
        "etc",
        "e.g",
        "i.e",
        "a.m",
        "p.m",
        "no",
        "fig",
        "approx",
        "dept",
        "inc",
        "ltd",
        "co",
    ]
)
# A clause longer than this (characters) is spoken without waiting for its full stop.
LONG_CLAUSE_CHARS = 120


def _is_abbreviation(text: str, dot: int) -> bool:
    if text[dot] != ".":
        return False
    word = re.search(r"([A-Za-z.]+)$", text[:dot])
    if word is None:
        return False
    token = word.group(1).lower().strip(".")
    # A single capital letter ("J. Smith") is an initial, not a sentence end.
    return token in _ABBREVIATIONS or (len(token) == 1 and text[dot - 1].isupper())


class SentenceSplitter:
    """Feed text deltas; get back the (start, end) character spans of complete sentences.

    Spans index the concatenation of everything pushed so far (``text``), cover it without
    gaps (leading whitespace of a sentence belongs to it) and end before the whitespace that
    follows the sentence. ``flush()`` returns the rest once the reply is complete.
    """

    def __init__(self, long_clause_chars: int = LONG_CLAUSE_CHARS) -> None:
        self.text = ""
        self._start = 0  # where the next sentence starts
        self._scan = 0  # where the next search for an end starts
        self._long = long_clause_chars

    def push(self, delta: str) -> list[tuple[int, int]]:
        self.text += delta
        spans: list[tuple[int, int]] = []
        while True:
            cut = self._next_cut()
            if cut is None:
                return spans
            if self.text[self._start : cut].strip():
                spans.append((self._start, cut))
                self._start = cut
            self._scan = cut

    def flush(self) -> list[tuple[int, int]]:
        """The unfinished rest (if it has anything to say) as a last span."""
        end = len(self.text.rstrip())
        if end > self._start and self.text[self._start : end].strip():
            span = (self._start, end)
            self._start = self._scan = len(self.text)
            return [span]
        return []

    def _next_cut(self) -> int | None:
        for match in _SENTENCE_END.finditer(self.text, self._scan):
            end = match.end()
            if match.group().startswith((".",)) and _is_abbreviation(self.text, match.start()):
                continue
            return end
        if len(self.text) - self._start > self._long:
            for match in _CLAUSE_END.finditer(self.text, self._start + self._long // 2):
                return match.end()
        return None
