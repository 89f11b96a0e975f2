"""The seed's multipart endpoints: a voice_file is passed on, or refused, never ignored."""

from __future__ import annotations

import io
import wave

import httpx
import pytest

from tests.speech.audio import sample_wav
from tests.support.errors import flat_error
from tests.tts.test_openai_compat import Script


@pytest.mark.parametrize("path", ["/v1/audio/speech/upload", "/v1/audio/speech/stream/upload"])
def test_an_engine_that_cannot_clone_refuses_the_file(daphne, path):
    response = httpx.post(
        daphne.url + path,
        data={"input": "Clone me."},
        files={"voice_file": ("me.wav", sample_wav(), "audio/wav")},
    )
    assert response.status_code == 422
    body = response.json()
    assert (
        flat_error(body)["error"] == "voice_cloning_unsupported" and body["field"] == "voice_file"
    )
    assert "espeak" in body["detail"] and "clone" in body["detail"]


def test_the_openai_engine_passes_the_file_on(daphne, standin):
    standin.reset(Script(pieces=[b"\x01\x00" * 2400] * 3, delay=0))
    sample = sample_wav()
    response = httpx.post(
        f"{daphne.url}/v1/audio/speech/upload",
        data={"input": "Clone me.", "model": "openai", "response_format": "pcm", "speed": "1.5"},
        files={"voice_file": ("me.wav", sample, "audio/wav")},
    )
    assert response.status_code == 200, response.text
    assert len(response.content) == 3 * 4800
    seen = standin.requests[-1]
    assert seen.path.endswith("/audio/speech/upload")
    assert seen.files["voice_file"] == ("me.wav", sample)
    assert seen.form["input"] == "Clone me." and float(seen.form["speed"]) == 1.5


def test_stream_upload_without_a_file_is_a_wav_stream(daphne):
    response = httpx.post(
        f"{daphne.url}/audio/speech/stream/upload",
        data={"input": "No file here.", "exaggeration": "0.9", "streaming_strategy": "word"},
    )
    assert response.status_code == 200
    assert response.content[:4] == b"RIFF"
    with wave.open(io.BytesIO(response.content)) as wav:
        assert wav.getnframes() > 0 or len(response.content) > 44


@pytest.mark.parametrize(
    ("data", "files", "status", "field"),
    [
        ({"input": "x", "speed": "fast"}, None, 422, "speed"),
        ({"input": "x", "exaggeration": "9"}, None, 422, "exaggeration"),
        ({"input": "x"}, {"voice_file": ("e.wav", b"", "audio/wav")}, 422, "voice_file"),
        ({"input": "x"}, {"other": ("e.wav", b"abc", "audio/wav")}, 422, "other"),
        ({"input": "x", "voice_file": "me.wav"}, {"z": ("z", b"", "a/b")}, 422, "voice_file"),
        ({"speed": "1"}, None, 422, "input"),
        ({"input": "x", "response_format": "mp3"}, None, 422, "response_format"),
    ],
)
def test_bad_multipart_input_is_a_json_error(daphne, data, files, status, field):
    # Without files httpx sends a urlencoded form, which is accepted as well.
    response = httpx.post(f"{daphne.url}/v1/audio/speech/stream/upload", data=data, files=files)
    assert response.status_code == status, response.text
    assert response.json()["field"] == field
    assert flat_error(response.json())["detail"]
    assert response.json()["detail"][0]["loc"] == ["body", field]
