"""What a listener heard of an utterance cut short: the words played by a byte offset.

Pure Python (no Django), shared by the core (a forced cut or a lease expiry publishes the heard
part of a stream's text, ``streams.services``) and the voice agent (barge-in,
``agents.pipeline``). With the engine's word marks a word counts once its first sample has
played; without, the heard fraction of the audio is applied to the characters.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

__all__ = ["SpokenSpan", "heard_prefix", "heard_text"]

# A reading pace for text whose audio has not all arrived (a stream cut before its last chunk):
# about 15 characters per second is a brisk English speaking rate (eSpeak NG at its default 175
# words per minute reads ~14-16), so the text is assumed to last at least that long.
CHARS_PER_SECOND = 15.0


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


def heard_prefix(
    text: str,
    *,
    heard_bytes: int,
    audio_bytes: int,
    complete: bool,
    bytes_per_second: float,
    words: list[tuple[int, int]] | tuple[tuple[int, int], ...] = (),
) -> str:
    """The heard part of one utterance ``text`` whose audio is ``audio_bytes`` long so far.

    ``heard_bytes``: bytes played by the listener (``heard_ms`` in bytes); ``complete``: all
    of the text's audio has arrived (the stream was finalized), so ``audio_bytes`` is its whole
    length. Otherwise the text's length is taken as at least ``CHARS_PER_SECOND`` of speech, so
    a cut early in a stream that is still arriving does not count its unsent words as heard.
    ``words``: (text offset, audio byte offset) word marks, in order, when the producer had
    them (Parley's own TTS does); they decide exactly. Returns a stripped prefix of ``text``
    ending at a word boundary ("" when nothing was heard).
    """
    if not text or heard_bytes <= 0:
        return ""
    length = audio_bytes
    if not complete and not words:
        frame = 2
        estimated = int(len(text) / CHARS_PER_SECOND * bytes_per_second)
        length = max(length, estimated - estimated % frame)
    if not complete and words and heard_bytes >= audio_bytes:
        # Marks cover what was synthesized; the text after the last heard word is unsent.
        length = max(length, heard_bytes + 1)
    span = SpokenSpan(0, len(text), 0, max(length, 1), tuple(tuple(w) for w in words))
    return heard_text(text, [span], heard_bytes)
