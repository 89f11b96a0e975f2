"""Split text into pieces for streaming synthesis (the seed's ``streaming_strategy``).

Every strategy returns spans of the original text, in order, without overlap, each trimmed of
surrounding whitespace and none empty; so the spans, with whitespace removed, spell the input
with whitespace removed. Pieces are at most ``chunk_size`` characters, except that ``sentence``
and ``paragraph`` keep a unit whole when it fits and only then fall back to finer boundaries:

- ``sentence``: cut after ``.``, ``!``, ``?`` (not after common abbreviations), then pack
  consecutive sentences while they fit; a longer sentence is cut at clause punctuation
  (``,;:``), then at word boundaries, then hard.
- ``paragraph``: cut at blank lines, pack paragraphs while they fit; a longer paragraph falls
  back to the sentence rules.
- ``word``: pack words while they fit; a word longer than ``chunk_size`` is cut hard.
- ``fixed``: exactly ``chunk_size`` characters per piece (trimming may shorten a piece).
- ``adaptive``: for a fast first byte and natural prosody after it. The first piece is at
  most ``ADAPTIVE_FIRST_CHARS`` (40) characters: the first sentence if it is that short, else
  its first clause, else its first few words. Each later piece may be twice as long as the
  one before (40, 80, 160, ...) until ``chunk_size``; from then on the rules of
  ``paragraph``. While the first piece plays, the engine has the time of its audio to
  synthesize a piece twice as long, so an engine at least twice as fast as real time never
  makes the player wait after the first byte.

:func:`split_segments` splits several texts (the segments of a multi-voice request) each on
its own; with ``adaptive`` the growth goes on from one text to the next, so only the very
first piece of the whole stream is small.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_STRATEGY",
    "MAX_CHUNK_SIZE",
    "MIN_CHUNK_SIZE",
    "STRATEGIES",
    "Strategy",
    "TextSpan",
    "sentence_spans",
    "split_segments",
    "split_spans",
    "split_text",
]

Strategy = Literal["sentence", "paragraph", "fixed", "word", "adaptive"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)
DEFAULT_STRATEGY: Strategy = "sentence"
# The API range of ``streaming_chunk_size``; the splitter itself accepts any size >= 1.
MIN_CHUNK_SIZE = 50
MAX_CHUNK_SIZE = 500
DEFAULT_CHUNK_SIZE = 200
# ``adaptive``: the first piece's budget in characters (about 2.5 s of speech at 175 words
# per minute), and how much each later piece's budget grows.
ADAPTIVE_FIRST_CHARS = 40
ADAPTIVE_GROWTH = 2


@dataclass(frozen=True, slots=True)
class TextSpan:
    start: int
    end: int
    text: str  # == source[start:end]


Range = tuple[int, int]
Level = Callable[[str, int, int, int], list[Range]]

_CLOSERS = "\"'\u201d\u2019)]}\u00bb"
_SENTENCE_END = re.compile(rf"[.!?\u2026]+[{re.escape(_CLOSERS)}]*(?=\s|$)")
_CLAUSE_END = re.compile(rf"(?:[,;:]|\u2014|\u2013|--)[{re.escape(_CLOSERS)}]*(?=\s|$)")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_WORD = re.compile(r"\S+")
# "Dr. Smith" is one sentence; a lone capital ("J. R. R.") is an initial, not an ending.
_ABBREVIATIONS = frozenset(
    {"mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "fig"}
    | {"approx", "dept", "inc", "ltd", "mt"}
)
_LAST_WORD = re.compile(r"(\S+)\.$")


def _trim(text: str, start: int, end: int) -> Range | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return (start, end) if start < end else None


def _units_ending_with(pattern: re.Pattern[str], skip: Callable[[str, int, int], bool]) -> Level:
    """Units that end right after each match of ``pattern`` (the terminator stays attached)."""

    def units(text: str, start: int, end: int, _size: int) -> list[Range]:
        found: list[Range] = []
        unit_start = start
        for match in pattern.finditer(text, start, end):
            if skip(text, unit_start, match.end()):
                continue
            if (unit := _trim(text, unit_start, match.end())) is not None:
                found.append(unit)
            unit_start = match.end()
        if (unit := _trim(text, unit_start, end)) is not None:
            found.append(unit)
        return found

    return units


def _is_abbreviation(text: str, unit_start: int, cut: int) -> bool:
    match = _LAST_WORD.search(text, unit_start, cut)
    if match is None:
        return False
    word = match.group(1).lstrip("(\"'").lower()
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def _never(_text: str, _start: int, _end: int) -> bool:
    return False


def _paragraph_units(text: str, start: int, end: int, _size: int) -> list[Range]:
    found: list[Range] = []
    unit_start = start
    for match in _BLANK_LINE.finditer(text, start, end):
        if (unit := _trim(text, unit_start, match.start())) is not None:
            found.append(unit)
        unit_start = match.end()
    if (unit := _trim(text, unit_start, end)) is not None:
        found.append(unit)
    return found


def _word_units(text: str, start: int, end: int, _size: int) -> list[Range]:
    return [match.span() for match in _WORD.finditer(text, start, end)]


def _fixed_units(text: str, start: int, end: int, size: int) -> list[Range]:
    found: list[Range] = []
    for piece_start in range(start, end, size):
        if (unit := _trim(text, piece_start, min(piece_start + size, end))) is not None:
            found.append(unit)
    return found


_sentence_units = _units_ending_with(_SENTENCE_END, _is_abbreviation)
_clause_units = _units_ending_with(_CLAUSE_END, _never)

# Each strategy is a list of boundary kinds, coarsest first; a unit too long for the chunk is
# split with the next kind. ``_fixed_units`` always fits, so it ends every list.
_LEVELS: dict[str, tuple[Level, ...]] = {
    "paragraph": (_paragraph_units, _sentence_units, _clause_units, _word_units, _fixed_units),
    "sentence": (_sentence_units, _clause_units, _word_units, _fixed_units),
    "word": (_word_units, _fixed_units),
    "fixed": (_fixed_units,),
}


def _split(text: str, start: int, end: int, levels: tuple[Level, ...], size: int) -> list[Range]:
    level, finer = levels[0], levels[1:]
    pieces: list[Range] = []
    current: Range | None = None
    for unit_start, unit_end in level(text, start, end, size):
        if unit_end - unit_start > size and finer:
            if current is not None:
                pieces.append(current)
                current = None
            pieces.extend(_split(text, unit_start, unit_end, finer, size))
        elif current is not None and unit_end - current[0] <= size:
            current = (current[0], unit_end)
        else:
            if current is not None:
                pieces.append(current)
            current = (unit_start, unit_end)
    if current is not None:
        pieces.append(current)
    return pieces


def _adaptive(text: str, size: int, budget: int) -> tuple[list[Range], int]:
    """``adaptive`` pieces of ``text`` starting from ``budget``; and the budget after them.

    While the budget is below ``size`` each piece is the first piece of the paragraph rules
    at that budget over the rest of the text (a few passes: the budget doubles each time);
    the rest is split at ``size`` in one pass.
    """
    levels = _LEVELS["paragraph"]
    pieces: list[Range] = []
    position, end = 0, len(text)
    while budget < size:
        ahead = _split(text, position, end, levels, budget)
        if not ahead:
            return pieces, budget
        pieces.append(ahead[0])
        position = ahead[0][1]
        budget = min(budget * ADAPTIVE_GROWTH, size)
    pieces += _split(text, position, end, levels, size)
    return pieces, budget


def _check(strategy: str, chunk_size: int) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown streaming strategy {strategy!r}; expected one of {STRATEGIES}")
    if chunk_size < 1:
        raise ValueError("chunk_size must be at least 1")


def _spans(text: str, ranges: list[Range]) -> list[TextSpan]:
    return [TextSpan(start, end, text[start:end]) for start, end in ranges]


def split_spans(
    text: str, strategy: str = DEFAULT_STRATEGY, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[TextSpan]:
    """Split ``text`` per ``strategy`` into spans that keep their offsets into ``text``."""
    _check(strategy, chunk_size)
    if strategy == "adaptive":
        return _spans(text, _adaptive(text, chunk_size, min(ADAPTIVE_FIRST_CHARS, chunk_size))[0])
    return _spans(text, _split(text, 0, len(text), _LEVELS[strategy], chunk_size))


def split_segments(
    texts: Sequence[str], strategy: str = DEFAULT_STRATEGY, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[list[TextSpan]]:
    """Each of ``texts`` split per ``strategy`` on its own (spans are offsets into that text):
    a piece never spans two texts. With ``adaptive`` the pieces' growth continues across the
    texts instead of starting small again in each one."""
    _check(strategy, chunk_size)
    if strategy != "adaptive":
        return [split_spans(text, strategy, chunk_size) for text in texts]
    budget = min(ADAPTIVE_FIRST_CHARS, chunk_size)
    split: list[list[TextSpan]] = []
    for text in texts:
        ranges, budget = _adaptive(text, chunk_size, budget)
        split.append(_spans(text, ranges))
    return split


def split_text(
    text: str, strategy: str = DEFAULT_STRATEGY, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> list[str]:
    """Like :func:`split_spans`, returning only the pieces of text."""
    return [span.text for span in split_spans(text, strategy, chunk_size)]


def sentence_spans(text: str) -> list[TextSpan]:
    """Each sentence on its own, however long (for engines that speak sentence by sentence)."""
    return [
        TextSpan(start, end, text[start:end])
        for start, end in _sentence_units(text, 0, len(text), len(text))
    ]


def has_speech(text: str) -> bool:
    """Whether `text` has anything an engine can say: a letter, a digit or a symbol
    (Unicode categories L*, N*, S*). Only punctuation, spaces, zero-width and control
    characters are silence, which the speech API refuses as `no_audio` instead of sending it.
    """
    return any(unicodedata.category(char)[0] in "LNS" for char in text)
