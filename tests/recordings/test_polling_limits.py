"""A Socket.IO chunk over the limit sent over long-polling gets our `chunk_too_large` and the
session goes on, however far over (up to 4x the limit: recordings/sio.py OVERSIZE_FACTOR).

Long-polling carries binary as base64, a third larger: engine.io's buffer used to be sized
for just over the limit, so a 1.1 MB chunk was answered with engine.io's bare 400 and the
client dropped without an `error` event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.recordings.clients import SioSession, pcm, start_embedded
from tests.support.servers import DaphneProcess

pytestmark = pytest.mark.timeout(180)
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneProcess]:
    var_dir: Path = tmp_path_factory.mktemp("polling-var")
    (started,) = start_embedded(var_dir, count=1)
    yield started
    started.stop()


@pytest.mark.parametrize("size", [MIB + 1, int(1.1e6), 2 * MIB, 4 * MIB])
async def test_oversized_chunk_over_polling_gets_our_error_and_the_session_goes_on(server, size):
    client = SioSession()
    await client.connect(server.url, transports=("polling",))
    event, payload = await client.chunk(b"\x01" * size)
    assert (event, payload["error"], payload.get("field")) == ("error", "chunk_too_large", "chunk")
    assert str(size) in payload["detail"]
    assert await client.chunk(pcm(0.1)) == ("response", {"message": "received chunk"})
    assert (await client.stop())[0] == "result_file_path"
    await client.close()
