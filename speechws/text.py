"""Cut text that arrives in increments into pieces to speak, as soon as each is complete.

Pure Python (no Django). The sentence rules are the speech API's own
(``speech.tts.text.sentence_spans``: ``.``, ``!``, ``?``, ``…`` then whitespace, not after a
common abbreviation or an initial); this module only decides when the last sentence of a
growing text is *complete*, which a splitter of whole texts never has to:

- a sentence is complete once whitespace follows its end mark (``"Hello."`` may still become
  ``"Hello.5"``; ``"Hello. "`` will not), and its end is not an abbreviation (``"Dr. "`` waits
  for the name);
- a line break ends a piece too (an LLM's list items and headings have no full stop);
- an unfinished sentence longer than ``max_chars`` is cut anyway, after its last clause mark
  (``,;:`` or a dash) in its second half, else at its last word boundary, else hard: a
  run-on answer does not hold the audio back.

Offsets are indices into the whole text received (Python ``str`` indices: code points).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from speech.tts.text import sentence_spans

__all__ = ["Piece", "TextCutter"]

# A character that starts a word: appended after the pending text, it tells whether the
# whitespace at its end closes the sentence before it (see _complete_end).
_SENTINEL = "X"
_CLAUSE_END = re.compile(r"(?:[,;:]|\u2014|\u2013|--)[\"'\u201d\u2019)\]]*(?=\s)")


@dataclass(frozen=True, slots=True)
class Piece:
    """``text[start:end]`` of the session's text: one unit to synthesize (trimmed)."""

    start: int
    end: int
    text: str


class TextCutter:
    """Feed text increments; get back the pieces that are complete, in order.

    ``append(text)`` returns the pieces completed by it; ``flush()`` the rest, whatever it
    is; ``drop()`` forgets the rest (a cancel) and returns its range. The pieces never
    overlap, are in text order, and, with whitespace removed, spell the text taken so far.
    Work per ``append`` is bounded by ``max_chars`` plus the increment.
    """

    def __init__(self, max_chars: int = 250) -> None:
        if max_chars < 2:
            raise ValueError("max_chars must be at least 2")
        self.max_chars = max_chars
        self._parts: list[str] = []
        self.length = 0  # characters received
        self.taken = 0  # text before this offset is in pieces (or dropped)
        self._pending = ""  # text[taken:]

    @property
    def pending(self) -> str:
        """The text received and not yet in a piece."""
        return self._pending

    def text(self, start: int = 0, end: int | None = None) -> str:
        """The session's text (or a slice of it)."""
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        whole = self._parts[0] if self._parts else ""
        return whole[start:end]

    def append(self, text: str) -> list[Piece]:
        self._parts.append(text)
        self.length += len(text)
        self._pending += text
        pieces: list[Piece] = []
        if any(c.isspace() for c in text):
            pieces += self._take(self._complete_end())
        # Trailing whitespace counts: a pending text never outgrows max_chars, so the work
        # of the next append is bounded whatever the client sends (a flood of spaces too).
        while len(self._pending.lstrip()) > self.max_chars:
            pieces += self._take(self._forced_end())
        return pieces

    def flush(self) -> list[Piece]:
        """Everything pending, as pieces (one per sentence)."""
        return self._take(len(self._pending))

    def drop(self) -> tuple[int, int]:
        """Forget the pending text; returns its range (start, end) in the session's text."""
        dropped = (self.taken, self.length)
        self.taken, self._pending = self.length, ""
        return dropped

    # --- where to cut --------------------------------------------------------------------

    def _complete_end(self) -> int:
        """Length of the pending text's prefix made of complete sentences and lines."""
        pending = self._pending
        line_end = pending.rfind("\n") + 1  # every line before the last break is complete
        rest = pending[line_end:]
        if not rest.strip():
            return len(pending)
        units = sentence_spans(rest + _SENTINEL)
        # The unit holding the sentinel is unfinished; the ones before it are complete.
        complete = [unit for unit in units if unit.end < len(rest) + 1]
        return line_end + (complete[-1].end if complete else 0)

    def _forced_end(self) -> int:
        """Where to cut a pending run-on that is over ``max_chars`` (never 0)."""
        pending = self._pending
        lead = len(pending) - len(pending.lstrip())
        limit = lead + self.max_chars
        window = pending[:limit]
        clause = None
        for match in _CLAUSE_END.finditer(window, lead + self.max_chars // 2):
            clause = match.end()
        if clause is not None:
            return clause
        space = max(window.rfind(" "), window.rfind("\t"))
        if space > lead:
            return space
        return limit

    def _take(self, end: int) -> list[Piece]:
        if end <= 0:
            return []
        base, chunk = self.taken, self._pending[:end]
        self.taken += end
        self._pending = self._pending[end:]
        pieces: list[Piece] = []
        line_start = 0
        for line in chunk.split("\n"):
            for unit in sentence_spans(line):
                start = base + line_start + unit.start
                pieces.append(Piece(start, start + len(unit.text), unit.text))
            line_start += len(line) + 1
        return pieces
