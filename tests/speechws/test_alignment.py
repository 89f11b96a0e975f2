"""speechws.alignment: word timings from engine marks, interpolated otherwise."""

from __future__ import annotations

from speechws.alignment import align_words


def test_engine_marks_time_every_word():
    words, source = align_words("Hello there.", 1000, [("word", 0, 0), ("word", 6, 400)])
    assert source == "engine"
    assert [(w.text, w.start_ms, w.end_ms) for w in words] == [
        ("Hello", 0, 400),
        ("there.", 400, 1000),
    ]


def test_no_marks_is_proportional_to_characters():
    words, source = align_words("ab cd", 1000, [])
    assert source == "proportional"
    assert [(w.start, w.end, w.start_ms) for w in words] == [(0, 2, 0), (3, 5, 600)]


def test_sentence_marks_anchor_the_interpolation():
    text = "One two. Three four."
    words, source = align_words(text, 2000, [("sentence", 0, 0), ("sentence", 9, 1500)])
    assert source == "mixed"
    by_text = {w.text: w for w in words}
    assert by_text["Three"].start_ms == 1500 and by_text["Three"].exact
    assert 0 < by_text["two."].start_ms < 1500
    assert 1500 < by_text["four."].start_ms < 2000


def test_a_mark_inside_a_word_times_that_word_and_times_never_go_back():
    words, _ = align_words('"Go" now then', 900, [("word", 1, 100), ("word", 5, 50)])
    assert words[0].start_ms == 100
    assert [w.start_ms for w in words] == sorted(w.start_ms for w in words)
    assert words[-1].end_ms == 900
    assert all(w.start_ms <= w.end_ms <= 900 for w in words)
