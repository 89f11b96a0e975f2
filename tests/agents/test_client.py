"""`python -m agents.client`, the README's terminal client, against a real daphne."""

from __future__ import annotations

import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.agents.conftest import silence, speech_pcm
from tests.support.servers import PROJECT_ROOT, DaphneProcess

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def daphne(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaphneProcess]:
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": None,
        "REDIS_URL": None,
        "PARLEY_VAR_DIR": str(tmp_path_factory.mktemp("agent-var")),
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
    )
    server = DaphneProcess(env=env, name="daphne-agent")
    yield server
    server.stop()


def run_client(daphne: DaphneProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "agents.client",
            "--url",
            f"ws://127.0.0.1:{daphne.port}/ws/agent",
            *args,
        ],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_a_spoken_question_from_a_wav_file(daphne, tmp_path: Path):
    question = tmp_path / "question.wav"
    with wave.open(str(question), "wb") as wav:  # 22.05 kHz stereo: the client converts
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(22050)
        pcm = speech_pcm("what is 2 plus 2", rate=22050) + silence(0.3, rate=22050)
        wav.writeframes(b"".join(pcm[i : i + 2] * 2 for i in range(0, len(pcm), 2)))
    answer = tmp_path / "answer.wav"
    result = run_client(daphne, "--wav", str(question), "--out", str(answer))
    assert result.returncode == 0, result.stderr
    assert "you:" in result.stdout and "agent:" in result.stdout
    assert "4" in result.stdout.split("agent:")[1]
    with wave.open(str(answer)) as wav:
        assert wav.getframerate() == 16000 and wav.getnframes() > 16000 * 0.5


def test_a_typed_question(daphne, tmp_path: Path):
    result = run_client(daphne, "--text", "say hello from the terminal")
    assert result.returncode == 0, result.stderr
    assert "agent: hello from the terminal" in result.stdout


def test_the_readme_example_works_as_written(daphne, tmp_path: Path):
    readme = (PROJECT_ROOT / "README.md").read_text()
    section = readme[readme.index("## Voice agent") :]
    code = section[section.index("```python\n") + 10 :]
    code = code[: code.index("```")]
    script = tmp_path / "example.py"
    script.write_text(code.replace("127.0.0.1:8000", f"127.0.0.1:{daphne.port}"))
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1] == "hello, traveller"
    assert float(lines[2].split()[0]) > 0.5
