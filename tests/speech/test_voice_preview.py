"""GET/HEAD /v1/voices/{name}/download of a preset, engine or OpenAI voice: a preview that is
the same every time (rendered once, then served from a bounded cache), so ranges and
If-Range work across requests and a HEAD costs no synthesis."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from channels.db import database_sync_to_async

from config.asgi import application
from speech import voices
from speech.models import SpeechJob

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("drain_recorders")]


@pytest.fixture(autouse=True)
def _fresh_cache():
    voices.clear_preview_cache()
    yield
    voices.clear_preview_cache()


def http() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=application), base_url="http://t")


async def preview_jobs() -> int:
    return await database_sync_to_async(SpeechJob.objects.filter(kind="preview").count)()


@pytest.mark.parametrize("name", ["alloy", "en-gb-x-rp"])
async def test_two_gets_give_the_same_bytes_and_etag_from_one_synthesis(name):
    url = f"/v1/voices/{name}/download"
    async with http() as client:
        first = await client.get(url)
        second = await client.get(url)
        head = await client.head(url)
        assert first.status_code == second.status_code == head.status_code == 200
        etag = first.headers["etag"]
        ranged = await client.get(url, headers={"Range": "bytes=0-99", "If-Range": etag})
    assert first.content == second.content and len(first.content) > 1000
    assert second.headers["etag"] == head.headers["etag"] == etag
    assert head.headers["content-length"] == str(len(first.content))
    assert ranged.status_code == 206, ranged.text
    assert ranged.content == first.content[:100]
    assert await preview_jobs() == 1


async def test_head_first_renders_once_and_the_get_after_it_does_not():
    async with http() as client:
        head = await client.head("/v1/voices/nova/download")
        got = await client.get("/v1/voices/nova/download")
    assert head.headers["etag"] == got.headers["etag"]
    assert await preview_jobs() == 1


async def test_a_changed_stored_voice_gets_a_new_preview():
    async with http() as client:
        await client.post("/v1/voices", json={"name": "deep", "preset": "en-us+m8"})
        before = await client.get("/v1/voices/deep/download")
        again = await client.get("/v1/voices/deep/download")
        patched = await client.patch("/v1/voices/deep", json={"preset": "en-gb"})
        assert patched.status_code == 200, patched.text
        after = await client.get("/v1/voices/deep/download")
    assert before.headers["etag"] == again.headers["etag"] != after.headers["etag"]
    assert await preview_jobs() == 2


async def test_the_cache_is_bounded(monkeypatch):
    async with http() as client:
        for name in ("alloy", "echo", "fable"):
            assert (await client.get(f"/v1/voices/{name}/download")).status_code == 200
    limit = voices.PREVIEW_CACHE_SIZE
    try:
        voices.PREVIEW_CACHE_SIZE = 2
        async with http() as client:
            await client.get("/v1/voices/onyx/download")
        # The least recently used ones went first.
        assert [key[0] for key in voices._PREVIEWS] == ["fable", "onyx"]
    finally:
        voices.PREVIEW_CACHE_SIZE = limit


async def test_concurrent_requests_share_one_synthesis():
    async with http() as client:
        answers = await asyncio.gather(
            *(client.get("/v1/voices/shimmer/download") for _ in range(3))
        )
    assert len({answer.content for answer in answers}) == 1
    assert await preview_jobs() == 1
