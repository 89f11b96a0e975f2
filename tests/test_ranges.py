"""Byte ranges on every audio URL (docs/api.md "Audio URLs: byte ranges"), through the real
ASGI application: /audio/{id}.wav, /api/streams/{id}/audio.wav, /v1/voices/{name}/download
and /static/audio/{sid}.wav all answer Range, If-Range and HEAD the same way."""

from __future__ import annotations

import base64
import struct
from collections.abc import Awaitable, Callable

import httpx
import pytest
from channels.db import database_sync_to_async
from django.core.files.base import ContentFile

from config.asgi import application
from speech.models import Voice
from streams.ranges import (
    RangeNotSatisfiable,
    content_etag,
    file_etag,
    if_range_allows,
    parse_range,
)
from tests.recordings.conftest import ws_open

pytestmark = pytest.mark.django_db(transaction=True)


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


@pytest.fixture(autouse=True)
def _files(settings, tmp_path) -> None:
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.PARLEY_RECORDINGS_DIR = tmp_path / "recordings"


def ramp(n_bytes: int) -> bytes:
    """16-bit PCM whose every byte pair differs, so a wrong offset cannot pass for right."""
    return struct.pack(f"<{n_bytes // 2}h", *((i * 7) % 32000 for i in range(n_bytes // 2)))


async def chat_answer(client: httpx.AsyncClient) -> str:
    answer = await client.post(
        "/chat", json={"text": "Hello there", "use_tts": True, "stream_audio": False}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()["audio_url"]


async def stream_wav(client: httpx.AsyncClient) -> str:
    sent = await client.post(
        "/audio",
        json={
            "stream_id": "ranged-1",
            "seq": 0,
            "room": "ranges",
            "speaker": "alice",
            "data": base64.b64encode(ramp(9600)).decode(),
            "done": True,
        },
    )
    assert sent.status_code in (200, 201), sent.text
    return "/api/streams/ranged-1/audio.wav"


async def voice_sample(client: httpx.AsyncClient) -> str:
    def create() -> None:
        voice = Voice(name="sampled", sample_filename="me.wav", sample_content_type="audio/wav")
        voice.sample.save("me.wav", ContentFile(b"RIFF" + ramp(6000)), save=False)
        voice.sample_bytes = voice.sample.size
        voice.save()

    await database_sync_to_async(create)()
    return "/v1/voices/sampled/download"


async def recording(client: httpx.AsyncClient) -> str:
    ws, hello = await ws_open()
    for _ in range(3):
        await ws.chunk(ramp(3200))
    await ws.send("stop_recording")
    await ws.disconnect()
    return f"/static/audio/{hello['streaming_id']}.wav"


MAKERS: dict[str, Callable[[httpx.AsyncClient], Awaitable[str]]] = {
    "chat": chat_answer,
    "stream": stream_wav,
    "voice": voice_sample,
    "recording": recording,
}


@pytest.mark.parametrize("kind", list(MAKERS))
async def test_every_audio_url_answers_ranges_the_same_way(kind):
    async with http() as client:
        url = await MAKERS[kind](client)
        whole = await client.get(url)
        assert whole.status_code == 200, whole.text
        body, size = whole.content, len(whole.content)
        assert size > 1000
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["content-length"] == str(size)
        assert "content-range" not in whole.headers
        etag = whole.headers["etag"]

        middle = await client.get(url, headers={"Range": "bytes=100-599"})
        assert middle.status_code == 206
        assert middle.content == body[100:600]
        assert middle.headers["content-range"] == f"bytes 100-599/{size}"
        assert middle.headers["content-length"] == "500"
        assert middle.headers["accept-ranges"] == "bytes"
        assert middle.headers["content-type"] == whole.headers["content-type"]

        suffix = await client.get(url, headers={"Range": "bytes=-100"})
        assert (suffix.status_code, suffix.content) == (206, body[-100:])
        assert suffix.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"

        open_ended = await client.get(url, headers={"Range": "bytes=100-"})
        assert (open_ended.status_code, open_ended.content) == (206, body[100:])
        assert open_ended.headers["content-range"] == f"bytes 100-{size - 1}/{size}"

        clamped = await client.get(url, headers={"Range": f"bytes={size - 10}-{size * 5}"})
        assert (clamped.status_code, clamped.content) == (206, body[-10:])

        outside = await client.get(url, headers={"Range": f"bytes={size}-"})
        assert outside.status_code == 416
        assert outside.headers["content-range"] == f"bytes */{size}"
        error = outside.json()
        # /v1/ paths answer errors in OpenAI's shape too; `field` is there either way.
        assert error["field"] == "Range"
        assert "range_not_satisfiable" in str(error["error"])

        # Several ranges, another unit, garbage: the whole file (RFC 9110 allows it).
        for header in ("bytes=0-1,5-6", "items=0-10", "bytes=x-y", "bytes=9-3"):
            ignored = await client.get(url, headers={"Range": header})
            assert (ignored.status_code, ignored.content) == (200, body), header

        head = await client.head(url)
        assert (head.status_code, head.content) == (200, b"")
        assert head.headers["content-length"] == str(size)
        assert head.headers["accept-ranges"] == "bytes"
        head_range = await client.head(url, headers={"Range": "bytes=-100"})
        assert (head_range.status_code, head_range.content) == (206, b"")
        assert head_range.headers["content-range"] == suffix.headers["content-range"]
        assert head_range.headers["content-length"] == "100"

        same = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": etag})
        assert (same.status_code, same.content) == (206, body[:10])
        changed = await client.get(url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
        assert (changed.status_code, changed.content) == (200, body)


async def test_a_growing_stream_changes_its_etag_so_if_range_sends_the_new_whole():
    def chunk(seq: int) -> dict:
        return {
            "stream_id": "growing",
            "seq": seq,
            "room": "ranges",
            "speaker": "alice",
            "data": base64.b64encode(ramp(4800)).decode(),
        }

    url = "/api/streams/growing/audio.wav"
    async with http() as client:
        assert (await client.post("/audio", json=chunk(0))).status_code in (200, 201)
        before = await client.get(url)
        assert (await client.post("/audio", json=chunk(1))).status_code in (200, 201)
        after = await client.get(url)
        assert len(after.content) == len(before.content) + 4800
        assert after.headers["etag"] != before.headers["etag"]
        stale = await client.get(
            url, headers={"Range": "bytes=0-9", "If-Range": before.headers["etag"]}
        )
        assert (stale.status_code, stale.content) == (200, after.content)


async def test_an_unknown_file_is_a_404_before_any_range():
    async with http() as client:
        for url in (
            "/audio/" + "0" * 32 + ".wav",
            "/api/streams/nope/audio.wav",
            "/v1/voices/nope/download",
            "/static/audio/nope.wav",
        ):
            response = await client.get(url, headers={"Range": "bytes=0-9"})
            assert response.status_code == 404, url


# --- the pure part (streams/ranges.py); parse_range's cases: tests/recordings/test_formats.py


def test_an_empty_body_satisfies_no_range():
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=0-", 0)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=-10", 0)
    assert parse_range("bytes=0-1,2-3", 0) is None


@pytest.mark.parametrize(
    ("if_range", "allowed"),
    [
        (None, True),
        ('"abc"', True),
        (' "abc" ', True),
        ('"abd"', False),
        ('W/"abc"', False),  # weak tags never match (RFC 9110 §13.1.5)
        ("Sat, 01 Jan 2000 00:00:00 GMT", False),  # no Last-Modified to compare a date with
        ("", False),
    ],
)
def test_if_range(if_range, allowed):
    assert if_range_allows(if_range, '"abc"') is allowed


def test_etags_are_strong_and_follow_the_bytes():
    assert content_etag(b"a") == content_etag(b"a") != content_etag(b"b")
    assert content_etag(b"a").startswith('"') and content_etag(b"a").endswith('"')
    assert file_etag(10, 5) != file_etag(11, 5) != file_etag(10, 6)
