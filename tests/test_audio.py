"""The pure audio math: no database, no Django."""

import io
import wave

import pytest

from streams.audio import (
    FormatError,
    PcmFormat,
    advance_playhead,
    heard_seconds,
    wav_header,
)


def test_duration_follows_the_seed_formula():
    fmt = PcmFormat(sample_rate_hz=24000, channels=1, bytes_per_sample=2, playback_speed=1.0)
    assert fmt.duration_s(48000) == pytest.approx(1.0)
    stereo_fast = PcmFormat(sample_rate_hz=16000, channels=2, bytes_per_sample=2, playback_speed=2)
    assert stereo_fast.duration_s(64000) == pytest.approx(0.5)
    assert fmt.duration_s(0) == 0


def test_bytes_for_is_the_inverse_of_duration_in_whole_frames():
    fmt = PcmFormat(sample_rate_hz=22050, channels=2, bytes_per_sample=2)
    data = fmt.bytes_for(0.25)
    assert data % fmt.frame_bytes == 0
    assert fmt.duration_s(data) == pytest.approx(0.25, abs=1 / 22050)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("sample_rate_hz", {"sample_rate_hz": 7999}),
        ("sample_rate_hz", {"sample_rate_hz": 48001}),
        ("channels", {"channels": 3}),
        ("channels", {"channels": 0}),
        ("bytes_per_sample", {"bytes_per_sample": 0}),
        ("bytes_per_sample", {"bytes_per_sample": 5}),
        ("playback_speed", {"playback_speed": 0.24}),
        ("playback_speed", {"playback_speed": 4.01}),
    ],
)
def test_out_of_range_formats_name_their_field(field, kwargs):
    with pytest.raises(FormatError) as caught:
        PcmFormat(**kwargs).validate()
    assert caught.value.field == field


def test_edges_of_the_ranges_are_valid():
    PcmFormat(8000, 2, 1, 0.25).validate()
    PcmFormat(48000, 1, 4, 4.0).validate()


def test_fast_producer_ends_at_first_arrival_plus_total_duration():
    playhead = None
    first_arrival = 100.0
    for i in range(10):  # ten 0.1 s chunks, all arriving within 10 ms
        _, playhead = advance_playhead(playhead, first_arrival + i * 0.001, 0.1)
    assert playhead == pytest.approx(first_arrival + 1.0)


def test_slow_producer_underruns_are_accounted_for():
    playhead = None
    starts = []
    for arrival in (0.0, 0.5, 1.0):  # 0.1 s chunks every 0.5 s: 0.4 s of silence each time
        start, playhead = advance_playhead(playhead, arrival, 0.1)
        starts.append(start)
    assert starts == [0.0, 0.5, 1.0]
    assert playhead == pytest.approx(1.1)


def test_heard_seconds_counts_only_what_played_by_now():
    spans = [(0.0, 0.1), (0.1, 0.1), (0.5, 0.1)]
    assert heard_seconds(spans, 0.05) == pytest.approx(0.05)
    assert heard_seconds(spans, 0.3) == pytest.approx(0.2)
    assert heard_seconds(spans, 0.55) == pytest.approx(0.25)
    assert heard_seconds(spans, 10) == pytest.approx(0.3)
    assert heard_seconds([], 10) == 0


def test_wav_header_with_real_sizes_parses():
    fmt = PcmFormat(sample_rate_hz=16000, channels=2, bytes_per_sample=2)
    data = bytes(range(256)) * 16
    wav = wave.open(io.BytesIO(wav_header(fmt, len(data)) + data))
    assert (wav.getframerate(), wav.getnchannels(), wav.getsampwidth()) == (16000, 2, 2)
    assert wav.getnframes() == len(data) // 4
    assert wav.readframes(wav.getnframes()) == data


def test_streamed_wav_header_uses_the_unknown_size_marker():
    header = wav_header(PcmFormat(), None)
    assert len(header) == 44
    assert header[4:8] == b"\xff\xff\xff\xff"
    assert header[40:44] == b"\xff\xff\xff\xff"
    wav = wave.open(io.BytesIO(header + b"\x00\x00" * 100))
    assert wav.getframerate() == 24000


def test_audio_math_has_no_django_import():
    import ast
    import pathlib

    import streams.audio

    tree = ast.parse(pathlib.Path(streams.audio.__file__).read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            roots.add(node.module.split(".")[0])
    assert "django" not in roots
