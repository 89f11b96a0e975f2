"""POST /audio's JSON validation: strict about JSON types, otherwise as AudioChunkSerializer."""

from __future__ import annotations

import random

import pytest

from streams.errors import ApiError
from streams.serializers import AudioChunkSerializer, chunk_from_request, json_chunk_fields

BASE = {"stream_id": "s-1", "seq": 3, "data": "AAAA"}

CASES = [
    {},
    {"done": True, "data": ""},
    {"speech_text": "  Hello, wörld!  "},
    {"speech_text": "x" * 20000},
    {"speech_text": "x" * 20001},
    {"speech_text": "lone \ud800 surrogate"},
    {"speech_text": None},
    {"room": "  lobby "},
    {"room": ""},
    {"room": "   "},
    {"room": "caf\u00e9"},
    {"speaker": None},
    {"speaker": "bob"},
    {"speaker": ""},
    {"speaker": 7},
    {"stream_id": ""},
    {"stream_id": " padded "},
    {"stream_id": "nul\x00"},
    {"stream_id": 12},
    {"seq": -1},
    {"seq": 2**31},
    {"seq": 2**31 - 1},
    {"seq": "4"},
    {"seq": 4.0},
    {"seq": True},
    {"seq": None},
    {"data": None},
    {"data": 5},
    {"data": "AA\u00e9A"},
    {"done": "true"},
    {"done": 1},
    {"sample_rate_hz": 16000},
    {"sample_rate_hz": "16000"},
    {"sample_rate_hz": 16000.0},
    {"channels": False},
    {"bytes_per_sample": 4},
    {"playback_speed": 2},
    {"playback_speed": 1.5},
    {"playback_speed": float("nan")},
    {"playback_speed": float("inf")},
    {"playback_speed": "1.5"},
    {"playback_speed": True},
    {"unknown": "ignored"},
]


def serializer_fields(values: dict) -> dict | None:
    serializer = AudioChunkSerializer(data=values)
    return dict(serializer.validated_data) if serializer.is_valid() else None


def check(values: dict) -> None:
    """What the JSON path accepts, the serializer accepts too, with the same values; what
    the serializer refuses, the JSON path refuses (it may refuse more: strings for numbers)."""
    try:
        chunk_from_request(values, raw_data=None, speaker="a")  # with the later checks
    except ApiError as exc:
        assert exc.field is not None and exc.status_code == 400, values
        return
    assert json_chunk_fields(values) == serializer_fields(values), values


@pytest.mark.parametrize("changes", CASES)
def test_json_validation_accepts_only_what_the_serializer_accepts_unchanged(changes):
    values = {**BASE, **changes}
    check(values)
    for key in BASE:  # a required field missing
        check({k: v for k, v in values.items() if k != key})


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"seq": "1"}, "seq"),
        ({"seq": 4.5}, "seq"),
        ({"seq": True}, "seq"),
        ({"done": "yes"}, "done"),
        ({"done": 1}, "done"),
        ({"stream_id": 5}, "stream_id"),
        ({"room": 5}, "room"),
        ({"speaker": False}, "speaker"),
        ({"sample_rate_hz": "16000"}, "sample_rate_hz"),
        ({"sample_rate_hz": 16000.5}, "sample_rate_hz"),
        ({"channels": 1.5}, "channels"),
        ({"playback_speed": "1.5"}, "playback_speed"),
        ({"data": 5}, "data"),
        ({"speech_text": ["a"]}, "speech_text"),
    ],
)
def test_json_types_are_strict(changes, field):
    with pytest.raises(ApiError) as caught:
        json_chunk_fields({**BASE, **changes})
    assert caught.value.field == field


def test_integral_json_numbers_are_integers():
    # JSON has one number type: 1.0 is the integer 1 (issue 8: "channels": 1.0 was refused).
    fields = json_chunk_fields({**BASE, "seq": 4.0, "sample_rate_hz": 16000.0, "channels": 1.0})
    assert (fields["seq"], fields["sample_rate_hz"], fields["channels"]) == (4, 16000, 1)
    assert type(fields["channels"]) is int


def test_the_common_chunk_is_accepted():
    values = {**BASE, "done": False, "speech_text": "", "room": "r", "speaker": "a"}
    assert json_chunk_fields(values)["seq"] == 3


def test_random_values_agree_with_the_serializer():
    rng = random.Random(7)
    pool = [None, True, False, 0, 1, -1, 2**40, 1.5, float("nan"), "", " ", "x", "7", "\x00"]
    pool += ["caf\u00e9", "\ud800", "AAAA", [], {}]
    fields = list(AudioChunkSerializer().fields)
    for _ in range(2000):
        values = dict(BASE)
        for name in rng.sample(fields, rng.randint(1, 4)):
            values[name] = rng.choice(pool)
        check(values)
