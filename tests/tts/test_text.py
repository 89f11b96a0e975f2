import random
import re

import pytest

from speech.tts.text import STRATEGIES, sentence_spans, split_spans, split_text

SAMPLE = (
    "Dr. Smith arrived at 3.14 p.m. and said: hello there! Was it raining? No.\n\n"
    "A second paragraph, with clauses; quite a few of them: one, two, three. "
    "Then a very long sentence that keeps going and going without any punctuation at all "
    "so that the splitter has to fall back to word boundaries when the chunk is small\n\n"
    "\u00abQuoted.\u00bb Caf\u00e9 cr\u00e8me \u2014 na\u00efve r\u00e9sum\u00e9\u2026 Done."
)
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


def random_text(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(0, 60)):
        word = rng.choice(WORDS)
        if rng.random() < 0.05:
            word = word * rng.randint(5, 40)  # words longer than small chunk sizes
        parts.append(word)
        parts.append(rng.choice([" ", " ", " ", ". ", "! ", "? ", ", ", "\n\n", "\n", "  "]))
    return "".join(parts)


def assert_valid_spans(text: str, spans, chunk_size: int) -> None:
    previous_end = 0
    for span in spans:
        assert text[span.start : span.end] == span.text
        assert span.start >= previous_end, "spans overlap or go backwards"
        assert span.text and span.text == span.text.strip()
        assert len(span.text) <= chunk_size
        previous_end = span.end
    # every non-whitespace character is kept, in order
    assert squeeze("".join(span.text for span in spans)) == squeeze(text)
    # and only whitespace was dropped between spans
    covered = [False] * len(text)
    for span in spans:
        covered[span.start : span.end] = [True] * (span.end - span.start)
    assert all(covered[i] or text[i].isspace() for i in range(len(text)))


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("chunk_size", [1, 7, 50, 200, 500])
def test_every_strategy_preserves_text_and_respects_chunk_size(strategy, chunk_size):
    rng = random.Random(f"{strategy}-{chunk_size}")
    for _ in range(40):
        text = random_text(rng)
        assert_valid_spans(text, split_spans(text, strategy, chunk_size), chunk_size)
    assert_valid_spans(SAMPLE, split_spans(SAMPLE, strategy, chunk_size), chunk_size)


def test_sentence_strategy_cuts_at_sentence_ends_and_packs_them():
    text = "One. Two! Three? Four."
    assert split_text(text, "sentence", 6) == ["One.", "Two!", "Three?", "Four."]
    assert split_text(text, "sentence", 10) == ["One. Two!", "Three?", "Four."]
    assert split_text(text, "sentence", 200) == [text]


def test_sentence_strategy_keeps_abbreviations_initials_and_decimals_together():
    text = "Dr. Smith paid 3.50 dollars to J. R. Tolkien. Then he left, e.g. home."
    assert split_text(text, "sentence", 50) == [
        "Dr. Smith paid 3.50 dollars to J. R. Tolkien.",
        "Then he left, e.g. home.",
    ]


def test_sentence_strategy_keeps_closing_quotes_with_the_sentence():
    text = '"Stop!" she said. (Really.) Fine.'
    assert split_text(text, "sentence", 10) == ['"Stop!"', "she said.", "(Really.)", "Fine."]


def test_long_sentence_falls_back_to_clauses_then_words():
    text = "first clause here, second clause here; and a third part that is long"
    pieces = split_text(text, "sentence", 20)
    assert pieces[:2] == ["first clause here,", "second clause here;"]
    assert all(len(piece) <= 20 for piece in pieces)
    assert all(not piece.startswith(("ird", "t ")) for piece in pieces)  # no word was cut
    assert " ".join(pieces) == text


def test_paragraph_strategy_cuts_only_at_blank_lines_when_paragraphs_fit():
    text = "Para one. Still one.\n\n  Para two.\n \nPara three is here."
    assert split_text(text, "paragraph", 20) == [
        "Para one. Still one.",
        "Para two.",
        "Para three is here.",
    ]
    # small paragraphs are packed together; a single newline is not a paragraph break
    assert split_text("a\nb\n\nc", "paragraph", 200) == ["a\nb\n\nc"]
    assert split_text("a\nb\n\nc", "paragraph", 3) == ["a\nb", "c"]


def test_paragraph_longer_than_chunk_falls_back_to_sentences():
    text = "First sentence here. Second sentence here.\n\nShort."
    assert split_text(text, "paragraph", 25) == [
        "First sentence here.",
        "Second sentence here.",
        "Short.",
    ]


def test_fixed_strategy_cuts_exact_lengths():
    assert split_text("abcdefghij", "fixed", 3) == ["abc", "def", "ghi", "j"]
    # trimming may shorten a piece, never lengthen it
    assert split_text("ab de fg", "fixed", 3) == ["ab", "de", "fg"]


def test_word_strategy_never_cuts_words_that_fit():
    text = "the quick brown fox jumps over the lazy dog"
    pieces = split_text(text, "word", 10)
    assert pieces == ["the quick", "brown fox", "jumps over", "the lazy", "dog"]
    assert split_text("abcdefghijkl xy", "word", 5) == ["abcde", "fghij", "kl", "xy"]


def test_whitespace_only_and_empty_text_give_no_pieces():
    for strategy in STRATEGIES:
        assert split_text("", strategy, 50) == []
        assert split_text(" \n\n\t ", strategy, 50) == []


def test_unicode_text_keeps_offsets():
    spans = split_spans(SAMPLE, "sentence", 50)
    assert spans[-1].text.endswith("Done.")
    assert all(SAMPLE[span.start : span.end] == span.text for span in spans)


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError):
        split_text("hi", "syllable", 50)
    with pytest.raises(ValueError):
        split_text("hi", "sentence", 0)


def test_sentence_spans_are_single_sentences_of_any_length():
    text = "Short one. " + "word " * 200 + "end. Last!"
    spans = sentence_spans(text)
    assert [span.text[:9] for span in spans] == ["Short one", "word word", "Last!"]
    assert all(text[span.start : span.end] == span.text for span in spans)
