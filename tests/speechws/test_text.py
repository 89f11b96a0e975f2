"""speechws.text.TextCutter: when a growing text's sentences are complete."""

from __future__ import annotations

import itertools
import random

import pytest

from speechws.text import TextCutter


def feed(tokens: list[str], max_chars: int = 250) -> tuple[TextCutter, list[list[str]]]:
    cutter = TextCutter(max_chars)
    return cutter, [[p.text for p in cutter.append(token)] for token in tokens]


def test_a_sentence_is_complete_once_whitespace_follows_its_end():
    _, out = feed(["Hello", " there", ".", " How", " are", " you?"])
    assert out == [[], [], [], ["Hello there."], [], []]


def test_an_end_mark_then_a_space_completes_at_once():
    _, out = feed(["Hello there. "])
    assert out == [["Hello there."]]


def test_a_period_inside_a_number_or_a_word_does_not_end_a_sentence():
    cutter, out = feed(["It costs 3", ".", "5 euros", " per e.g", ". item"])
    assert out == [[], [], [], [], []]
    assert [p.text for p in cutter.flush()] == ["It costs 3.5 euros per e.g. item"]


@pytest.mark.parametrize("text", ["I met Dr. ", "Ask J. ", "See Fig. "])
def test_an_abbreviation_or_initial_waits_for_what_follows(text):
    cutter, out = feed([text])
    assert out == [[]]
    assert [p.text for p in cutter.append("Smith today. Then")] == [text + "Smith today."]


def test_a_line_break_ends_a_piece():
    _, out = feed(["Steps:\n- install it\n", "- run it"])
    assert out == [["Steps:", "- install it"], []]


def test_quotes_after_the_end_mark_stay_with_the_sentence():
    _, out = feed(['He said "go." ', "Then"])
    assert out == [['He said "go."'], []]


def test_a_run_on_is_cut_at_a_clause_mark_in_its_second_half():
    text = "word " * 12 + "clause, " + "more " * 20
    cutter = TextCutter(80)
    pieces = cutter.append(text)
    assert pieces and pieces[0].text.endswith("clause,")
    assert len(cutter.pending.strip()) <= 80


def test_a_run_on_without_clause_marks_is_cut_at_a_space_and_never_mid_word():
    cutter = TextCutter(60)
    pieces = cutter.append("abcdefg " * 40)
    assert all(p.text.split() and all(w == "abcdefg" for w in p.text.split()) for p in pieces)
    assert all(len(p.text) <= 60 for p in pieces)


def test_a_run_on_without_spaces_is_cut_hard():
    cutter = TextCutter(50)
    pieces = cutter.append("x" * 175)
    assert [len(p.text) for p in pieces] == [50, 50, 50]
    assert [p.text for p in cutter.flush()] == ["x" * 25]


def test_flush_and_drop():
    cutter = TextCutter()
    assert [p.text for p in cutter.append("One. Two")] == ["One."]
    assert [(p.start, p.end, p.text) for p in cutter.flush()] == [(5, 8, "Two")]
    cutter.append(" three four")
    assert cutter.drop() == (8, 19)
    assert [p.text for p in cutter.append(" Five. ")] == ["Five."]
    assert cutter.text() == "One. Two three four Five. "


def test_pieces_are_in_order_and_spell_the_text_whatever_the_tokens():
    """Offsets index the whole text; pieces never overlap and, without whitespace, spell
    it — for any way of cutting the same text into tokens."""
    text = (
        "Parley speaks. Dr. Smith said: it costs 3.5 euros, e.g. here!\n"
        "- a list item\n- another one\n"
        + "A run-on sentence that goes on and on, with commas, and more words " * 6
        + "and ends. \u201cQuoted?\u201d Yes\u2026 done"
    )
    rng = random.Random(7)
    for _ in range(30):
        cutter = TextCutter(rng.choice([50, 120, 250]))
        pieces, at = [], 0
        while at < len(text):
            size = rng.randint(1, 12)
            pieces += cutter.append(text[at : at + size])
            at += size
        pieces += cutter.flush()
        assert all(p.text == text[p.start : p.end] for p in pieces)
        assert all(a.end <= b.start for a, b in itertools.pairwise(pieces))
        squeezed = "".join(p.text for p in pieces).replace(" ", "").replace("\n", "")
        assert squeezed == text.replace(" ", "").replace("\n", "")
        assert all(len(p.text) <= cutter.max_chars for p in pieces)


def test_the_work_of_an_append_is_bounded_whatever_the_client_sends():
    """A flood of whitespace after a word made every append rescan all of it (quadratic:
    20,000 one-space appends took 2.4 s); the pending text now never outgrows max_chars."""
    import time

    for flood in (" ", "\t\t", " \u00a0"):
        cutter = TextCutter(250)
        cutter.append("word")
        started = time.perf_counter()
        for _ in range(20_000):
            cutter.append(flood)
            assert len(cutter.pending) <= 250 + len(flood)
        assert time.perf_counter() - started < 1.5  # 0.05 s here; generous for a busy machine
