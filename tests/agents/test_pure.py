"""The agent's pure parts: the sentence splitter, the listener's playhead, heard text, the
sequence window, frame parsing (no Django, no I/O)."""

from __future__ import annotations

import base64

import pytest

from agents.playout import Playout, SpokenSpan, heard_text
from agents.protocol import AudioFormat, ProtocolError, SequenceWindow, check_text, parse_format
from agents.sentences import SentenceSplitter


def split(deltas: list[str]) -> list[str]:
    splitter = SentenceSplitter()
    spans = [span for delta in deltas for span in splitter.push(delta)] + splitter.flush()
    return [splitter.text[a:b] for a, b in spans]


def test_sentences_come_as_soon_as_they_end_and_cover_the_text():
    deltas = ["Hello there", ". Dr. Smith is ", "here! What", "? Ok"]
    sentences = split(deltas)
    assert sentences == ["Hello there.", " Dr. Smith is here!", " What?", " Ok"]
    assert "".join(sentences) == "".join(deltas)


def test_a_long_clause_is_cut_at_a_comma_and_decimals_are_not_sentence_ends():
    text = "We went on, " * 15 + "and on."
    sentences = split([text])
    assert len(sentences) > 1 and "".join(sentences) == text
    assert split(["It costs 3.50 dollars. Fine."]) == ["It costs 3.50 dollars.", " Fine."]


def test_the_playhead_paces_ahead_by_the_lead_and_accounts_for_underruns():
    playout = Playout(bytes_per_second=32000, lead_s=0.3)
    assert playout.wait_s(10.0) == 0
    playout.sent(3200, 10.0)  # 100 ms
    playout.sent(3200, 10.0)
    playout.sent(3200, 10.0)
    assert playout.playhead == pytest.approx(10.3)
    assert playout.wait_s(10.0) == 0  # exactly the lead ahead
    playout.sent(3200, 10.0)
    assert playout.wait_s(10.0) == pytest.approx(0.1)
    assert playout.heard_bytes(10.15) == 4800
    # An underrun: the next chunk starts when it arrives, not at the old playhead.
    playout.sent(3200, 11.0)
    assert playout.heard_s(11.05) == pytest.approx(0.45)
    assert playout.playing(11.05) and not playout.playing(11.2)


TEXT = "One two three. Four five six."
SPANS = [
    SpokenSpan(0, 14, 0, 1000, ((0, 0), (4, 300), (8, 600))),
    SpokenSpan(14, 29, 1000, 2000),  # no word marks: proportional by characters
]


@pytest.mark.parametrize(
    ("heard", "expected"),
    [
        (0, ""),
        (1, "One"),
        (299, "One"),
        (301, "One two"),
        (700, "One two three."),
        (1500, "One two three. Four five"),
        (2000, TEXT),
    ],
)
def test_heard_text_is_the_words_whose_audio_had_started(heard, expected):
    assert heard_text(TEXT, SPANS, heard) == expected


def test_heard_text_never_includes_what_was_not_synthesized_yet():
    # The responder wrote two sentences; only the first was synthesized and all of it heard.
    assert heard_text(TEXT, SPANS[:1], 5000) == "One two three."
    assert heard_text(TEXT, [], 5000) == ""


def test_the_sequence_window_reorders_ignores_duplicates_and_skips_lost_chunks():
    window = SequenceWindow(window=4)
    assert window.push(1, b"b") == ([], None)
    assert window.push(0, b"a") == ([b"a", b"b"], None)
    assert window.push(0, b"a") == ([], None) and window.duplicates == 1
    assert window.push(3, b"d") == ([], None)
    # 2 never comes: a chunk past the window gives up on it.
    ready, gap = window.push(7, b"h")
    assert ready == [b"d", b"h"] and gap == (2, 6, 4)  # 3 came, 2 and 4-6 did not
    assert window.push(8, b"i") == ([b"i"], None)
    assert window.push(None, b"j") == ([b"j"], None)


def test_formats_and_text_fields():
    assert parse_format(None) == AudioFormat()
    assert parse_format({"sample_rate_hz": 48000.0, "channels": 2}).bytes_per_second == 192000
    for bad in ({"sample_rate_hz": True}, {"sample_rate_hz": 16000.5}, {"bits": 8}):
        with pytest.raises(ProtocolError) as error:
            parse_format(bad)
        assert error.value.code == "unsupported_format"
    for value in ("a\x00b", "\ud800", 5, "x" * 11):
        with pytest.raises(ProtocolError) as error:
            check_text(value, "text", limit=10)
        assert (error.value.code, error.value.field) == ("invalid_text", "text")
    assert base64.b64encode(b"\0\0")  # the contract's audio is base64 PCM


def test_a_barge_in_hold_counts_from_where_the_probability_rose_but_not_further():
    from agents.engines.vad import TurnDetector, VadConfig

    detector = TurnDetector(VadConfig(threshold=0.5, min_speech_ms=96))
    for prob in (0.05, 0.4, 0.45, 0.42, 0.9):  # rising for three frames, then speech
        detector.push(prob)
    assert detector.speech_ms == 32
    assert detector.held_ms == 96  # two rising frames at most count, not three
    detector.push(0.0)  # silence before the onset was confirmed: a blip, forgotten
    assert detector.held_ms == detector.speech_ms == 0
    for prob in (0.1, 0.9):  # no rise: the hold starts at the onset
        detector.push(prob)
    assert detector.held_ms == detector.speech_ms == 32
