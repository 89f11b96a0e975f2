"""A real daphne serving Parley on embedded SQLite, an OpenAI-compatible stand-in speech
server it can call (model="openai"), and the official openai SDK pointed at it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator

import openai
import pytest

from tests.support.servers import PROJECT_ROOT, DaphneProcess
from tests.tts.test_openai_compat import SpeechServer


@pytest.fixture(scope="session")
def standin() -> Iterator[SpeechServer]:
    server = SpeechServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def daphne(
    standin: SpeechServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaphneProcess]:
    var_dir = tmp_path_factory.mktemp("speech-var")
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        # Embedded mode whatever the suite runs with: SQLite under a private var dir.
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(var_dir),
        "PARLEY_OPENAI_TTS_URL": standin.base_url,
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    server = DaphneProcess(env=env, name="daphne-speech")
    yield server
    server.stop()


@pytest.fixture
def sdk(daphne: DaphneProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{daphne.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture
async def drain_recorders() -> None:
    """Let job recorders of an in-loop test write their final state before the loop ends."""
    yield
    from speech.services import _RECORDERS

    if _RECORDERS:
        await asyncio.wait(list(_RECORDERS), timeout=5)
