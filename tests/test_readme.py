"""Every README example works as written, as a newcomer runs it after `bin/serve` (issue 9 §3).

Each ```sh / ```python block of README.md follows a marker: `<!-- readme-test: <name> -->`
names the checks below, `<!-- readme-test: skip (<reason>) -->` leaves a block out (the server
itself, Docker). The blocks run in README order against one real server (the deployed
`python -m config.server`), with `127.0.0.1:8000` / `localhost:8000` replaced by its address,
in a scratch directory holding the checkout's `.venv` and `manage.py` (so the files they write
land there), with the venv's python first on PATH. A block must exit 0 and do what the README
says it does: JSON answers, a WAV of the right bytes, a recording's URL that serves the file.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.parley_server import FuzzServer, running_server
from tests.support.servers import PROJECT_ROOT

pytestmark = pytest.mark.timeout(240)

README = PROJECT_ROOT / "README.md"
MARKED = re.compile(
    r"<!-- readme-test: (?P<name>[\w-]+|skip \([^)]+\)) -->\n```(?P<lang>sh|python)\n"
    r"(?P<code>.*?)\n```",
    re.S,
)
FENCES = re.compile(r"^```(?:sh|python)$", re.M)


@dataclass(frozen=True)
class Block:
    name: str
    lang: str
    code: str


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [Block(m["name"], m["lang"], m["code"]) for m in MARKED.finditer(text)]


@dataclass
class Run:
    """The scratch directory the examples run in, and what they printed."""

    server: FuzzServer
    cwd: Path
    env: dict[str, str]
    background: dict[str, subprocess.Popen[str]]

    def command(self, block: Block) -> list[str]:
        port = self.server.daphne.port
        code = block.code.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
        code = code.replace("localhost:8000", f"localhost:{port}")
        if block.lang == "python":
            script = self.cwd / f"example_{block.name.replace('-', '_')}.py"
            script.write_text(code + "\n")
            return ["python", script.name]
        return ["bash", "-euo", "pipefail", "-c", code]

    def run(self, block: Block) -> str:
        started = time.monotonic()
        done = subprocess.run(
            self.command(block),
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, f"{block.name} exited {done.returncode}:\n{done.stderr}"
        print(f"{block.name}: {time.monotonic() - started:.1f} s")
        return done.stdout

    def start(self, block: Block) -> subprocess.Popen[str]:
        """Start a block that runs until stopped; its output goes to `<name>.out` (a pipe
        nobody reads while the next blocks run would fill up and stall it)."""
        with open(self.cwd / f"{block.name}.out", "w") as out:
            proc = subprocess.Popen(
                self.command(block),
                cwd=self.cwd,
                env=self.env,
                stdin=subprocess.PIPE,  # held open: an interactive client waits on it
                stdout=out,
                stderr=subprocess.STDOUT,
                text=True,
            )
        self.background[block.name] = proc
        return proc

    def stop(self, name: str) -> tuple[int, str]:
        """Ctrl-C a background block; (exit code, its output)."""
        proc = self.background.pop(name)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        return proc.returncode, (self.cwd / f"{name}.out").read_text()

    def wait_for(self, name: str, needle: str, timeout: float = 30) -> str:
        """Wait until a background block printed a line holding `needle` (it is connected)."""
        deadline = time.monotonic() + timeout
        while True:
            out = (self.cwd / f"{name}.out").read_text()
            for line in out.splitlines():
                if needle in line:
                    return line
            proc = self.background[name]
            assert proc.poll() is None, f"{name} exited {proc.returncode}: {out}"
            assert time.monotonic() < deadline, f"no {needle!r} from {name}: {out}"
            time.sleep(0.1)


def wav_frames(path: Path) -> tuple[tuple[int, int, int], bytes]:
    with wave.open(str(path), "rb") as wav:
        params = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        return params, wav.readframes(wav.getnframes())


def json_docs(out: str) -> list:
    """The JSON answers a block printed (curl adds no newline between them)."""
    decoder, docs, at = json.JSONDecoder(), [], 0
    while at < len(out.rstrip()):
        doc, end = decoder.raw_decode(out, at)
        docs.append(doc)
        at = end + len(out[end:]) - len(out[end:].lstrip())
    return docs


def floor_free(run: Run, room: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{run.server.url}/api/rooms/{room}", timeout=10).json()["turn"]:
        assert time.monotonic() < deadline, f"{room}'s floor still held"
        time.sleep(0.2)


# What each block must do beyond exiting 0. `listen`/`websockets` run in the background
# through the walk; the long-poll's check stops them as the README says (Ctrl-C).


def check_listen(run: Run, block: Block) -> None:
    run.start(block)
    run.wait_for(block.name, " state ")


def check_websockets(run: Run, block: Block) -> None:
    run.start(block)
    assert '"type": "state"' in run.wait_for(block.name, '"type"')


def check_walk(run: Run, out: str) -> None:
    claim, first, done = json_docs(out)
    assert (claim["speaker"], claim["status"]) == ("npc-1", "claimed")
    assert (first["seq"], first["done"]) == (0, False)
    assert (done["stream_id"], done["seq"], done["done"]) == ("hello-1", 1, True)
    assert done["duration_ms"] == 1000 and done["playback_ends_at"]


def check_raw(run: Run, out: str) -> None:
    (answer,) = json_docs(out)
    assert (answer["stream_id"], answer["done"], answer["duration_ms"]) == ("raw-1", True, 1000)


def check_longpoll(run: Run, out: str) -> None:
    (answer,) = json_docs(out)
    assert answer["events"][0]["name"] == "SpeechFinished" and answer["last_id"] > 0
    floor_free(run, "lobby")  # both streams played: everything the listener hears is in
    code, out = run.stop("listen")  # Ctrl-C
    assert code == 0, out
    assert "'Hello, traveller.'" in out and "SpeechFinished hello-1" in out
    assert "wrote 2.00 s (96000 bytes, 24000 Hz, 1 ch) to lobby.wav from 2 stream(s)" in out
    assert wav_frames(run.cwd / "lobby.wav") == ((24000, 1, 2), bytes(96000))  # hello-1, raw-1
    _, out = run.stop("websockets")  # Ctrl-C too
    assert '"type": "playback_done"' in out and '"stream_id": "raw-1"' in out


def check_say(run: Run, out: str) -> None:
    (answer,) = json_docs(out)
    assert answer["stream_id"] and answer["duration_ms"] > 0, answer


def check_speech(run: Run, out: str) -> None:
    mp3 = (run.cwd / "hello.mp3").read_bytes()
    assert mp3[:3] == b"ID3" or mp3[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"), mp3[:16]
    wav = (run.cwd / "stream.wav").read_bytes()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 44 + 4800
    assert out.startswith(("data:", "event:")) and "data:" in out


def check_openai(run: Run, out: str) -> None:
    params, frames = wav_frames(run.cwd / "speech.wav")
    assert params[2] == 2 and len(frames) > params[0]  # more than half a second of speech
    # the voice agent's example below sends a WAV of a question: this one will do
    shutil.copy(run.cwd / "speech.wav", run.cwd / "my-question.wav")


def check_socketio(run: Run, out: str) -> None:
    url = out.strip()
    assert re.fullmatch(r"http://\S+/static/audio/\S+\.wav", url), out
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200
    path = run.cwd / "recording.wav"
    path.write_bytes(response.content)
    assert wav_frames(path) == ((16000, 1, 2), bytes(3200))  # the one chunk, all of it


def check_agent_cli(run: Run, out: str) -> None:
    _, frames = wav_frames(run.cwd / "answer.wav")
    assert frames and out.count("wrote answer.wav") == 2, out


def check_agent_ws(run: Run, out: str) -> None:
    lines = out.splitlines()
    assert re.fullmatch(r"[\w-]+", lines[0]) and lines[-1].endswith("s of speech"), out
    assert float(lines[-1].split()[0]) > 0


def check_api_keys(run: Run, out: str) -> None:
    keys = out.split()
    assert len(keys) == 2 and all(key.startswith("pk_") for key in keys), out


# What must hold before a block runs, as the README's text around it says.
BEFORE: dict[str, Callable[[Run], None]] = {
    "raw": lambda run: floor_free(run, "lobby"),  # "Once the floor is free again"
}
BACKGROUND: dict[str, Callable[[Run, Block], None]] = {
    "listen": check_listen,
    "websockets": check_websockets,
}
CHECKS: dict[str, Callable[[Run, str], None]] = {
    "walk": check_walk,
    "raw": check_raw,
    "longpoll": check_longpoll,
    "say": check_say,
    "speech": check_speech,
    "openai": check_openai,
    "socketio": check_socketio,
    "agent-cli": check_agent_cli,
    "agent-ws": check_agent_ws,
    "api-keys": check_api_keys,
}


def test_every_example_block_is_marked_and_checked():
    blocks = readme_blocks()
    assert len(blocks) == len(FENCES.findall(README.read_text())), "an unmarked example"
    names = [b.name for b in blocks if not b.name.startswith("skip")]
    assert len(names) == len(set(names))
    assert set(names) == set(BACKGROUND) | set(CHECKS)


def test_every_readme_example_works_as_written(tmp_path):
    (tmp_path / ".venv").symlink_to(PROJECT_ROOT / ".venv")
    (tmp_path / "manage.py").symlink_to(PROJECT_ROOT / "manage.py")
    with running_server(require_auth=False) as server:
        env = {k: v for k, v in {**os.environ, **server.env}.items() if v is not None}
        env |= {
            "PATH": f"{PROJECT_ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(PROJECT_ROOT),
            # where bin/serve would listen: manage.py listen and agents.client default to it
            "PARLEY_HOST": "127.0.0.1",
            "PARLEY_PORT": str(server.daphne.port),
        }
        run = Run(server=server, cwd=tmp_path, env=env, background={})
        try:
            for block in readme_blocks():
                if block.name.startswith("skip"):
                    continue
                if block.name in BEFORE:
                    BEFORE[block.name](run)
                if block.name in BACKGROUND:
                    BACKGROUND[block.name](run, block)
                else:
                    CHECKS[block.name](run, run.run(block))
            assert not run.background, f"still running: {sorted(run.background)}"
        finally:
            for proc in run.background.values():
                proc.kill()
                proc.communicate()
