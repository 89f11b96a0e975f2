"""The pure parts: declared formats and byte ranges."""

from __future__ import annotations

import pytest

from recordings.formats import RecordingFormat, parse_format
from streams.audio import FormatError, PcmFormat
from streams.ranges import RangeNotSatisfiable, parse_range


def test_pcm_is_the_default_at_16k_mono_16_bit():
    assert parse_format({}) == RecordingFormat(
        container="pcm", pcm=PcmFormat(sample_rate_hz=16000, channels=1, bytes_per_sample=2)
    )


@pytest.mark.parametrize(
    ("declared", "container"),
    [
        ("webm", "webm"),
        ("audio/webm;codecs=opus", "webm"),
        ("audio/ogg; codecs=opus", "ogg"),
        ("audio/mpeg", "mp3"),
        ("WAV", "wav"),
        ("raw", "pcm"),
    ],
)
def test_container_names_and_mime_types(declared, container):
    assert parse_format({"format": declared}).container == container


def test_query_strings_and_auth_values_both_work():
    fmt = parse_format({"sample_rate_hz": "48000", "channels": 2, "bytes_per_sample": "4"})
    assert fmt.pcm == PcmFormat(sample_rate_hz=48000, channels=2, bytes_per_sample=4)
    decoded = parse_format({"format": "webm", "sample_rate_hz": 16000})
    assert (decoded.decode_rate_hz, decoded.decode_channels) == (16000, None)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"format": "flac"}, "format"),
        ({"format": 3}, "format"),
        ({"sample_rate_hz": "fast"}, "sample_rate_hz"),
        ({"sample_rate_hz": 7}, "sample_rate_hz"),
        ({"sample_rate_hz": True}, "sample_rate_hz"),
        ({"channels": 3}, "channels"),
        ({"bytes_per_sample": 9}, "bytes_per_sample"),
        ({"format": "webm", "bytes_per_sample": 4}, "bytes_per_sample"),
        ({"format": "mp3", "channels": 5}, "channels"),
    ],
)
def test_bad_formats_name_their_field(params, field):
    with pytest.raises(FormatError) as caught:
        parse_format(params)
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 99)),
        ("bytes=100-", (100, 999)),
        ("bytes=-100", (900, 999)),
        ("bytes=-5000", (0, 999)),
        ("bytes=990-5000", (990, 999)),
        ("bytes=5-1", None),  # malformed: ignored, the whole file is sent
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=a-b", None),
        ("bytes=-", None),
        # Thousands of digits are past the end, not Python's int-conversion limit (a 500).
        ("bytes=0-" + "9" * 5000, (0, 999)),
        ("bytes=-" + "9" * 5000, (0, 999)),
    ],
)
def test_byte_ranges(header, expected):
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize(
    "header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0", "bytes=" + "9" * 5000 + "-"]
)
def test_ranges_outside_the_file_are_unsatisfiable(header):
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)
