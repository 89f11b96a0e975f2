"""A page on another origin calls Parley from a real Chromium (docs/api.md "CORS").

A tiny static server (Python's http.server) serves a blank page on its own port; Parley runs
as bin/serve runs it (`python -m config.server`, keys required) on another port with
PARLEY_CORS_ORIGINS naming that page's origin `http://127.0.0.1:<page port>`. From the page,
Chromium's fetch() enforces CORS itself: the preflight of a POST with `authorization`, JSON
and the OpenAI JS SDK's `x-stainless-*` headers, and which answer headers a script may read.
The same page reached as `http://localhost:<page port>` is another origin, not listed: the
browser refuses it the answer.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest

from tests.support.browser import ensure_chromium, launch, screenshot_on_failure
from tests.support.parley_server import FuzzServer, running_server

pytestmark = pytest.mark.timeout(180)

# What openai-node sends with every request (its buildHeaders / getPlatformHeaders).
STAINLESS = {
    "x-stainless-lang": "js",
    "x-stainless-package-version": "4.104.0",
    "x-stainless-os": "Linux",
    "x-stainless-arch": "x64",
    "x-stainless-runtime": "browser:chrome",
    "x-stainless-runtime-version": "140.0.0",
    "x-stainless-retry-count": "0",
    "x-stainless-timeout": "600",
    "openai-organization": "org-test",
    "openai-project": "proj-test",
}


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def page_server(tmp_path_factory) -> Iterator[int]:
    """A static server on 127.0.0.1 (another port than Parley's): its port."""
    root: Path = tmp_path_factory.mktemp("page")
    (root / "index.html").write_text("<!doctype html><title>another origin</title><p>page</p>")
    handler = functools.partial(_Quiet, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def parley(page_server: int) -> Iterator[FuzzServer]:
    origins = f"http://127.0.0.1:{page_server}"
    with running_server(
        require_auth=True,
        extra_env={"PARLEY_TTS_ENGINE": "espeak", "PARLEY_CORS_ORIGINS": origins},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ensure_chromium()  # installs Debian's chromium if needed, before any timer runs
    with sync_playwright() as p:
        launched = launch(p)
        try:
            yield launched
        finally:
            launched.close()


# Runs in the page: the speech request as the OpenAI JS SDK makes it, then a ranged GET.
CALL = """async ({url, key, extra, streamPath}) => {
  const speech = await fetch(url + "/v1/audio/speech", {
    method: "POST",
    headers: {authorization: "Bearer " + key, "content-type": "application/json",
              accept: "application/json", ...extra},
    body: JSON.stringify({model: "tts-1", voice: "alloy", input: "Hello from another origin.",
                          response_format: "wav"}),
  });
  const bytes = new Uint8Array(await speech.arrayBuffer());
  const part = await fetch(url + streamPath, {headers: {range: "bytes=4-11"}});
  const partBytes = new Uint8Array(await part.arrayBuffer());
  return {
    status: speech.status,
    type: speech.headers.get("content-type"),
    jobId: speech.headers.get("x-speech-job-id"),
    sampleRate: speech.headers.get("x-sample-rate"),
    length: bytes.length,
    head: String.fromCharCode(...bytes.slice(0, 4)),
    riffFormat: String.fromCharCode(...bytes.slice(8, 12)),
    partStatus: part.status,
    contentRange: part.headers.get("content-range"),
    acceptRanges: part.headers.get("accept-ranges"),
    partBytes: Array.from(partBytes),
  };
}"""

REFUSED = """async ({url, key, extra}) => {
  try {
    await fetch(url + "/v1/audio/speech", {
      method: "POST",
      headers: {authorization: "Bearer " + key, "content-type": "application/json", ...extra},
      body: JSON.stringify({model: "tts-1", voice: "alloy", input: "Hi.",
                            response_format: "wav"}),
    });
    return "answered";
  } catch (error) {
    return "refused: " + error.name;
  }
}"""


def _post_stream(parley: FuzzServer, stream_id: str, pcm: bytes) -> None:
    body = {
        "stream_id": stream_id,
        "seq": 0,
        "room": "cors",
        "data": base64.b64encode(pcm).decode(),
        "done": True,
    }
    request = Request(
        f"{parley.url}/audio",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {parley.api_key}"},
    )
    with urlopen(request, timeout=30) as answer:
        assert answer.status in (200, 201)


def test_a_page_on_another_origin_gets_speech_and_ranges(
    parley: FuzzServer, page_server: int, browser: Any, tmp_path
):
    pcm = bytes(range(256)) * 8
    _post_stream(parley, "cors-stream", pcm)
    with urlopen(f"{parley.url}/api/streams/cors-stream/audio.wav", timeout=30) as answer:
        wav = answer.read()
    page = browser.new_page()
    page.on("console", lambda msg: print(f"console.{msg.type}: {msg.text}"))
    with screenshot_on_failure(page, tmp_path, "cors"):
        page.goto(f"http://127.0.0.1:{page_server}/index.html")
        result = page.evaluate(
            CALL,
            {
                "url": parley.url,
                "key": parley.api_key,
                "extra": STAINLESS,
                "streamPath": "/api/streams/cors-stream/audio.wav",
            },
        )
    assert result["status"] == 200, result
    assert result["type"].startswith("audio/wav"), result
    assert (result["head"], result["riffFormat"]) == ("RIFF", "WAVE")
    assert result["length"] > 4000  # a sentence of speech, not an error body
    # Headers the page may read only because they are exposed.
    assert result["jobId"] and int(result["sampleRate"]) >= 8000, result
    assert result["partStatus"] == 206
    assert result["contentRange"] == f"bytes 4-11/{len(wav)}"
    assert result["acceptRanges"] == "bytes"
    assert bytes(result["partBytes"]) == wav[4:12]


def test_an_origin_not_listed_is_refused_by_the_browser(
    parley: FuzzServer, page_server: int, browser: Any, tmp_path
):
    page = browser.new_page()
    with screenshot_on_failure(page, tmp_path, "cors-refused"):
        # localhost and 127.0.0.1 are different origins; only the latter is listed.
        page.goto(f"http://localhost:{page_server}/index.html")
        outcome = page.evaluate(
            REFUSED, {"url": parley.url, "key": parley.api_key, "extra": STAINLESS}
        )
    assert outcome == "refused: TypeError"
