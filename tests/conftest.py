from __future__ import annotations

import base64
import struct
from collections.abc import Iterator

import pytest
from django.test import Client

from streams import auth


def pcm(seconds: float, *, sample_rate: int = 24000, channels: int = 1, width: int = 2) -> bytes:
    """A deterministic ramp of `seconds` of PCM (content matters only for equality checks)."""
    frames = int(seconds * sample_rate)
    if width == 2:
        samples = struct.pack(
            f"<{frames * channels}h", *((i * 7) % 32000 for i in range(frames * channels))
        )
        return samples
    return bytes(i % 251 for i in range(frames * channels * width))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def client() -> Client:
    return Client()


@pytest.fixture(autouse=True)
def _clear_key_cache() -> Iterator[None]:
    auth._cache.clear()
    yield
    auth._cache.clear()


@pytest.fixture
def post_chunk(client: Client):
    def send(**fields):
        body = {"stream_id": "s1", "seq": 0, "room": "r1", "speaker": "alice", **fields}
        if isinstance(body.get("data"), bytes):
            body["data"] = b64(body["data"])
        return client.post("/audio", body, content_type="application/json")

    return send
