"""Hostile WebSocket clients against a real daphne (issue 8, section 4).

The spectator (`/spectate/ws`), recording (`/ws/streaming`), agent (`/ws/agent`), speech
(`/v1/audio/speech/ws`) and chunk ingest (`/ws/audio`) sockets get hypothesis-generated
query strings and frames (wrong JSON types, huge numbers, binary, invalid UTF-8) and end
abruptly. Every frame is answered by an
error frame or a close with a code — never a 5xx handshake, a 1011 or silence — and
afterwards no spectator is counted and the server's memory is flat after ~1,000 more
(bench/fuzz_ws.py runs 10,000).
Fixed seed (derandomize) and bounded examples: the same cases every run.
"""

from __future__ import annotations

import json
import os
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.fuzz_ws import (
    FUZZ_ROOMS,
    HUGE,
    hammer,
    must_answer,
    rss_mb,
    session,
    wait_for_no_spectators,
)

pytestmark = pytest.mark.timeout(180)

CONNECTIONS = int(os.environ.get("PARLEY_WS_FUZZ_CONNECTIONS", "1000"))
# Allocator noise and caches warmed by new code paths; a leak of one socket's state per
# connection would be tens of MB here.
RSS_SLACK_MB = 25.0

numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.sampled_from([HUGE, "-1", "1e400", "NaN", "0x10", "%EF%BC%91", "", " 1", "1.5"]),
)
names = st.sampled_from([*FUZZ_ROOMS, "%00", "a" * 100, "..", "%C3%BC", "x y"])
query_values = st.one_of(numbers, names, st.text(max_size=20).map(quote))
query = st.dictionaries(
    st.sampled_from(
        [
            *("room", "after", "sample_rate_hz", "channels", "bytes_per_sample", "format"),
            *("speaker", "stream_id", "seq"),
        ]
    ),
    query_values,
    max_size=4,
).map(lambda params: "&".join(f"{k}={v}" for k, v in params.items()))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
typed = st.builds(
    lambda key, name, value: json.dumps({key: name, "data": value, "session": value}),
    st.sampled_from(["type", "event"]),
    st.sampled_from(
        [
            *("audio_chunk", "stop_recording", "session.update", "response.create"),
            *("input_text.append", "input_text.flush", "cancel", "end"),
        ]
    )
    | json_values,
    json_values,
)
frames = st.lists(
    st.one_of(
        json_values.map(lambda v: ("text", json.dumps(v).encode())),
        typed.map(lambda text: ("text", text.encode())),
        st.binary(max_size=64).map(lambda b: ("binary", b)),
        st.binary(min_size=1, max_size=8).map(lambda b: ("badutf8", b"\xff" + b)),
        st.just(("text", HUGE.encode())),
    ),
    max_size=4,
)


@settings(
    derandomize=True,
    max_examples=int(os.environ.get("PARLEY_WS_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    endpoint=st.sampled_from(
        ["/spectate/ws", "/ws/streaming", "/ws/agent", "/v1/audio/speech/ws", "/ws/audio"]
    ),
    query=query,
    with_key=st.booleans(),
    frames=frames,
    ending=st.sampled_from(["close", "reset", "fin"]),
)
def test_every_frame_is_answered(fuzz_server, endpoint, query, with_key, frames, ending):
    if with_key:
        query = f"{query}&api_key={fuzz_server.api_key}"
    path = f"{endpoint}?{query}"
    problem = session(
        fuzz_server.daphne.port, path, frames, ending=ending, must_answer=must_answer(path)
    )
    assert problem is None, (problem, endpoint, query, frames)


def test_memory_and_presence_are_flat_after_many_hostile_connections(fuzz_server):
    port, key = fuzz_server.daphne.port, fuzz_server.api_key
    assert hammer(port, key, 100) == []  # warm-up: every code path loaded once
    start = rss_mb(fuzz_server.daphne.pid)
    bad = hammer(port, key, CONNECTIONS)
    assert bad == [], bad[:10]
    assert wait_for_no_spectators(fuzz_server.url) == 0
    grown = rss_mb(fuzz_server.daphne.pid) - start
    assert grown < RSS_SLACK_MB, f"RSS grew {grown:.1f} MB over {CONNECTIONS} connections"
    log = fuzz_server.daphne.log()
    for failure in ("Exception inside application", "Traceback"):
        assert failure not in log, log[-3000:]
