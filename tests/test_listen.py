"""`manage.py listen <room>` against a real server: the events printed one per line, the WAV
holding exactly the bytes POSTed to /audio, resumption with --after, and the refusals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.parley_server import FuzzServer, running_server
from tests.support.servers import PROJECT_ROOT

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False) as s:
        yield s


def listen(server: FuzzServer, *args: str, **popen) -> subprocess.Popen[str]:
    env = {k: v for k, v in {**os.environ, **server.env}.items() if v is not None}
    return subprocess.Popen(
        [sys.executable, "manage.py", "listen", *args, "--url", server.url],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def post_stream(
    url: str, room: str, stream_id: str, chunks: list[bytes], *, rate: int, text: str
) -> None:
    """One stream through POST /audio as raw bodies, the last chunk marked done."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for seq, data in enumerate(chunks):
            params = {
                "room": room,
                "speaker": "npc-1",
                "stream_id": stream_id,
                "seq": seq,
                "sample_rate_hz": rate,
            }
            if seq == len(chunks) - 1:
                params |= {"done": "true", "speech_text": text}
            response = client.post(
                "/audio",
                params=params,
                content=data,
                headers={"content-type": "application/octet-stream"},
            )
            assert response.status_code in (200, 201, 202), response.text


def wait_released(url: str, room: str, timeout: float = 30) -> int:
    """Wait until the room's floor is free again; returns the room's last event id."""
    deadline = time.monotonic() + timeout
    while True:
        state = httpx.get(f"{url}/api/rooms/{room}", timeout=10).json()
        if state.get("turn") is None or time.monotonic() > deadline:
            return state["last_event_id"]
        time.sleep(0.2)


def wav_frames(path: Path) -> tuple[tuple[int, int, int], bytes]:
    with wave.open(str(path), "rb") as wav:
        params = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        return params, wav.readframes(wav.getnframes())


def test_listen_prints_events_and_writes_exactly_the_audio_posted(server, tmp_path):
    chunks = [os.urandom(3200), os.urandom(1600), os.urandom(4800)]  # 0.3 s at 16 kHz
    out = tmp_path / "heard.wav"
    proc = listen(server, "live", "--out", str(out), "--until-idle", "4")
    first = proc.stdout.readline()  # the join's state: the socket is open
    assert " state " in first and "floor free" in first, first
    post_stream(server.url, "live", "live-1", chunks, rate=16000, text="Hello, traveller.")
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    lines = [first, *stdout.splitlines()]
    kinds = [line.split()[2] for line in lines]
    assert kinds == [
        "state",
        "turn",
        "state",
        "audio_chunk",
        "audio_chunk",
        "audio_chunk",
        "playback_done",
        "speech",
        "input",
        "input",
        "turn",
        "state",
    ], stdout
    speech = next(line for line in lines if " speech " in line)
    assert "npc-1" in speech and "'Hello, traveller.'" in speech
    assert "SpeechFinished live-1" in stdout and "AudioEnded live-1" in stdout
    assert "live-1 #2 at 150 ms, 4800 bytes" in stdout
    # the WAV: the bytes posted, in order, in the stream's own format
    assert wav_frames(out) == ((16000, 1, 2), b"".join(chunks))
    assert f"wrote 0.30 s (9600 bytes, 16000 Hz, 1 ch) to {out}" in stderr


def test_after_replays_the_log_and_streams_of_another_format_get_their_own_file(server, tmp_path):
    first = [os.urandom(4800), os.urandom(4800)]
    second = [os.urandom(9600)]
    third = [os.urandom(2000)]
    post_stream(server.url, "replay", "r-1", first, rate=24000, text="one")
    wait_released(server.url, "replay")
    post_stream(server.url, "replay", "r-2", second, rate=24000, text="two")
    wait_released(server.url, "replay")
    post_stream(server.url, "replay", "r-3", third, rate=8000, text="three")
    last = wait_released(server.url, "replay")
    out = tmp_path / "replay.wav"
    # every stored event, then stop: --count bounds the run whatever comes live
    proc = listen(server, "replay", "--after", "0", "--count", str(last), "--out", str(out))
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    ids = [int(line.split()[0]) for line in stdout.splitlines()]
    assert ids == list(range(1, last + 1))  # in order, none missed, none doubled
    assert wav_frames(out) == ((24000, 1, 2), b"".join(first + second))
    assert wav_frames(tmp_path / "replay.2.wav") == ((8000, 1, 2), b"".join(third))
    assert f"last id {last} (resume with --after {last})" in stderr
    assert "from 3 stream(s)" in stderr


def test_ctrl_c_leaves_a_valid_wav_and_seconds_stops_a_quiet_room(server, tmp_path):
    out = tmp_path / "quiet.wav"
    proc = listen(server, "quiet", "--out", str(out))
    assert " state " in proc.stdout.readline()
    post_stream(server.url, "quiet", "q-1", [os.urandom(480)], rate=24000, text="")
    deadline = time.monotonic() + 30
    while not (out.exists() and out.stat().st_size >= 44 + 480) and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert wav_frames(out)[1] and len(wav_frames(out)[1]) == 480

    started = time.monotonic()
    proc = listen(server, "silent", "--seconds", "1", "--out", str(tmp_path / "none.wav"))
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and time.monotonic() - started < 25
    assert stdout.split()[2] == "state" and "no audio heard" in stderr
    assert not (tmp_path / "none.wav").exists()


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("bad room!", "--seconds", "5"), "4400 invalid_room"),
        (("lobby", "--after", "-1"), "--after must be an event id"),
        (("lobby", "--count", "0"), "--count: must be a whole number above 0, not '0'"),
        (("lobby", "--count", "x"), "--count: must be a whole number above 0, not 'x'"),
        (("lobby", "--seconds", "nan"), "--seconds: must be a finite number above 0, not 'nan'"),
        (("lobby", "--seconds", "inf"), "--seconds: must be a finite number above 0, not 'inf'"),
        (("lobby", "--seconds", "-1"), "--seconds: must be a finite number above 0, not '-1'"),
        (("lobby", "--until-idle", "NaN"), "--until-idle: must be a finite number above 0"),
    ],
)
def test_bad_arguments_are_refused(server, args, error):
    proc = listen(server, *args)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode != 0
    assert error in stderr, stderr


def run_listen(*args: str) -> subprocess.CompletedProcess[str]:
    """manage.py listen against nothing: port 9 refuses, so any error before it came first."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    return subprocess.run(
        [sys.executable, "manage.py", "listen", *args, "--url", "http://127.0.0.1:9"],
        cwd=PROJECT_ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("where", ["missing-dir/x.wav", ".", "file-as-dir/x.wav"])
def test_an_unwritable_out_is_refused_before_connecting(tmp_path, where):
    (tmp_path / "file-as-dir").write_text("not a directory")
    out = tmp_path / where
    done = run_listen("lobby", "--out", str(out))
    assert done.returncode == 1
    assert f"cannot write --out {out}:" in done.stderr, done.stderr
    for noise in ("cannot reach", "Traceback", "Exception ignored"):
        assert noise not in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file-as-dir"]


def test_a_writable_out_is_left_as_it_was_until_audio_comes(tmp_path):
    fresh, kept = tmp_path / "fresh.wav", tmp_path / "kept.wav"
    kept.write_bytes(b"earlier")
    for out in (fresh, kept):
        done = run_listen("lobby", "--out", str(out))
        assert "cannot reach ws://127.0.0.1:9/" in done.stderr, done.stderr
    assert not fresh.exists() and kept.read_bytes() == b"earlier"


def test_an_unreachable_server_is_one_line_not_a_traceback(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "manage.py", "listen", "lobby", "--url", "http://127.0.0.1:9"],
        cwd=PROJECT_ROOT,
        env={**env, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "cannot reach ws://127.0.0.1:9/spectate/ws?room=lobby" in done.stderr
    assert "Traceback" not in done.stderr
