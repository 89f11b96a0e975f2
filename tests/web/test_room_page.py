"""The room page (/rooms/<room>/) in a real Chromium against a real server
(`python -m config.server`, this leg's database): it plays every chunk of a stream back to
back on its jitter buffer, and resumes after the server drops its socket with every event
shown exactly once.

The page exposes what it did on `window.parleyRoom` (web/static/web/room.js): `scheduled` holds
each chunk's start and end on the AudioContext clock (seconds), `events` every event it handled.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import struct
import time
from collections.abc import Iterator
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest

from tests.support.browser import ensure_chromium, launch, screenshot_on_failure
from tests.support.parley_server import FuzzServer, running_server
from tests.support.servers import PARLEY_SERVER, DaphneProcess

pytestmark = pytest.mark.timeout(240)

RATE = 24000
CHUNK_S = 0.25


def tone(seq: int, seconds: float = CHUNK_S, hz: float = 440.0) -> bytes:
    """A sine that continues across chunks (so a gap or an overlap would be audible)."""
    frames = int(RATE * seconds)
    first = seq * frames
    return b"".join(
        struct.pack("<h", int(8000 * math.sin(2 * math.pi * hz * (first + n) / RATE)))
        for n in range(frames)
    )


def post_json(url: str, body: dict[str, Any], method: str = "POST") -> dict[str, Any]:
    request = Request(
        url,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except HTTPError as exc:
        pytest.fail(f"{method} {url} answered {exc.code}: {exc.read()[:500]!r}")


def get_json(url: str) -> dict[str, Any]:
    with urlopen(url, timeout=30) as answer:
        return json.loads(answer.read())


def post_chunk(
    server_url: str, *, room: str, stream_id: str, seq: int, last: int, text: str
) -> None:
    post_json(
        f"{server_url}/audio",
        {
            "room": room,
            "speaker": "narrator",
            "stream_id": stream_id,
            "seq": seq,
            "data": base64.b64encode(tone(seq)).decode(),
            "sample_rate_hz": RATE,
            "done": seq == last,
            **({"speech_text": text} if seq == last else {}),
        },
    )


def room_state(page: Any) -> dict[str, Any]:
    return page.evaluate("() => ({...window.parleyRoom, audioTime: window.parleyRoom.audioTime()})")


def wait_until(page: Any, what: str, check: Any, timeout: float) -> dict[str, Any]:
    """Poll window.parleyRoom until `check(state)`; fail saying what was awaited and the state."""
    deadline = time.monotonic() + timeout
    while True:
        state = room_state(page)
        if check(state):
            return state
        if time.monotonic() > deadline:
            brief = {k: v for k, v in state.items() if k not in ("events", "scheduled")}
            brief["events"] = state["events"][-10:]
            brief["scheduled"] = state["scheduled"][-5:]
            pytest.fail(f"timed out after {timeout} s waiting for {what}: {brief}")
        page.wait_for_timeout(100)


def last_event_id(server_url: str, room: str) -> int:
    return get_json(f"{server_url}/api/rooms/{room}")["last_event_id"]


def settled(page: Any, server_url: str, room: str) -> Any:
    """A check: the page has handled every event the room has, and its floor is free."""

    def check(state: dict[str, Any]) -> bool:
        floor = state["floor"] or {}
        return floor.get("speaker") is None and state["lastId"] == last_event_id(server_url, room)

    return check


@pytest.fixture(scope="module")
def room_server() -> Iterator[FuzzServer]:
    with running_server(require_auth=False) as server:
        yield server


@pytest.fixture(scope="module")
def room_browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ensure_chromium()  # installs Debian's chromium if needed, before any timer runs
    with sync_playwright() as p:
        browser = launch(p)
        try:
            yield browser
        finally:
            browser.close()


def open_room(browser: Any, url: str) -> Any:
    page = browser.new_page()
    page.on("console", lambda msg: print(f"console.{msg.type}: {msg.text}"))
    page.on("pageerror", lambda err: print(f"page error: {err}"))
    page.goto(url)
    page.wait_for_function(
        "() => window.parleyRoom && window.parleyRoom.status === 'live'", timeout=30000
    )
    return page


def test_room_page_plays_every_chunk_back_to_back(
    room_server: FuzzServer, room_browser: Any, tmp_path
):
    page = open_room(room_browser, f"{room_server.url}/rooms/radio/")
    with screenshot_on_failure(page, tmp_path, "room-playback"):
        page.click("#room-listen")
        page.wait_for_function("() => window.parleyRoom.listening", timeout=10000)
        last = 11
        # Seqs 1-3 first: the server holds them until seq 0 comes, then publishes 0-3 in
        # order at once; the rest follow in order, faster than they play.
        for seq in [1, 2, 3, 0, *range(4, last + 1)]:
            post_chunk(
                room_server.url,
                room="radio",
                stream_id="tone-1",
                seq=seq,
                last=last,
                text="A tone, in twelve pieces.",
            )
        state = wait_until(
            page,
            "every chunk scheduled and played",
            lambda s: (
                s["played"] >= last + 1
                and len([c for c in s["scheduled"] if c["stream"] == "tone-1"]) == last + 1
            ),
            timeout=60,
        )
        chunks = [c for c in state["scheduled"] if c["stream"] == "tone-1"]
        assert [c["seq"] for c in chunks] == list(range(last + 1))
        for chunk in chunks:
            assert chunk["duration"] == pytest.approx(CHUNK_S, abs=0.001)
        # Back to back: each chunk starts where the previous one ended.
        for previous, chunk in itertools.pairwise(chunks):
            assert abs(chunk["startAt"] - previous["endAt"]) < 0.003, (previous, chunk)
        assert state["underruns"] == 0
        assert [c["fresh"] for c in chunks] == [True] + [False] * last
        # The audio clock ran through all of it.
        assert state["audioTime"] >= chunks[-1]["endAt"]

        # The text is published once the stream has played, into the transcript.
        page.wait_for_selector(
            ".room-utterance[data-stream='tone-1']:has-text('A tone, in twelve pieces.')",
            timeout=30000,
        )
        wait_until(page, "the floor released", settled(page, room_server.url, "radio"), 30)
        assert page.locator("#floor-holder").inner_text() == "free"


def test_room_page_resumes_after_the_server_drops_its_socket(room_browser: Any, tmp_path):
    with running_server(require_auth=False) as server:
        page = open_room(room_browser, f"{server.url}/rooms/again/")
        restarted: DaphneProcess | None = None
        with screenshot_on_failure(page, tmp_path, "room-resume"):
            for seq in range(3):
                post_chunk(
                    server.url, room="again", stream_id="before", seq=seq, last=2, text="one"
                )
            wait_until(page, "the first stream's events", settled(page, server.url, "again"), 30)
            before = room_state(page)["lastId"]

            # The server goes away: every socket it held is dropped.
            server.daphne.stop()
            wait_until(page, "the page to notice", lambda s: s["status"] == "reconnecting", 30)
            restarted = DaphneProcess(
                env=server.env, server=PARLEY_SERVER, port=server.daphne.port, name="parley-again"
            )
            try:
                # Events the page cannot have seen live: it is still waiting to retry.
                for seq in range(3):
                    post_chunk(
                        server.url, room="again", stream_id="after", seq=seq, last=2, text="two"
                    )
                state = wait_until(
                    page,
                    "the page to resume and catch up",
                    lambda s: s["reconnects"] >= 1 and settled(page, server.url, "again")(s),
                    60,
                )
                ids = [event["id"] for event in state["events"]]
                assert len(ids) == len(set(ids)), "an event was shown twice"
                last = last_event_id(server.url, "again")
                assert set(range(1, last + 1)) <= set(ids), "an event was missed"
                # It resumed from the last event it had, not from scratch.
                assert any(url.endswith(f"&after={before}") for url in state["socketUrls"][1:])
                assert "reconnected" in page.locator("#room-conn").inner_text()
                assert page.locator(".room-event-reconnect").count() >= 1
                texts = page.locator(".room-utterance-text").all_inner_texts()
                assert texts == ["one", "two"]
            finally:
                restarted.stop()
