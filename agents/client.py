"""Talk to a Parley voice agent from a terminal: ``python -m agents.client``.

Streams a WAV file (any rate, mono or stereo, 16-bit) to ``/ws/agent`` in real time, as a
microphone would, or sends typed text; prints the conversation as it happens and writes what
the agent said to a WAV file. The server finds the end of the turn on its own (server VAD),
so the file needs about a second of silence after the speech, which the client appends.

    python -m agents.client --wav question.wav --out answer.wav
    python -m agents.client --text "what is 2 plus 2" --out answer.wav
    python -m agents.client --url ws://host:8000/ws/agent?room=lobby --wav q.wav

No Django import: this is a plain client of the public protocol (docs/agent.md).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import sys
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np
import soxr
import websockets

RATE = 16000
CHUNK_MS = 20


def read_wav(path: Path) -> bytes:
    """PCM16 mono 16 kHz of a 16-bit WAV file (channels averaged, rate converted by soxr)."""
    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise SystemExit(f"{path}: 16-bit PCM WAV expected, got {8 * wav.getsampwidth()}-bit")
        rate, channels = wav.getframerate(), wav.getnchannels()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        samples = soxr.resample(samples.astype(np.float32), rate, RATE)
    return np.clip(samples, -32768, 32767).astype("<i2").tobytes()


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


def describe(frame: dict[str, Any]) -> str | None:
    """One line per event worth showing a person; None for the rest (audio chunks)."""
    kind = frame["type"]
    if kind == "transcript.final":
        return f"you:   {frame['text']}"
    if kind == "agent.text.done":
        return f"agent: {frame['text']}"
    if kind == "agent.interrupt":
        return f"agent cut off after {frame['heard_ms']} ms: heard {frame['heard_text']!r}"
    if kind == "turn.metrics":
        return f"       (reply after {frame.get('reply_latency_ms')} ms)"
    if kind == "error":
        return f"error: {frame['code']}: {frame['detail']}"
    if kind == "session.created":
        return f"session {frame['session']['id']} in room {frame['session']['room']}"
    return None


async def converse(url: str, *, wav: Path | None, text: str | None, out: Path | None) -> int:
    agent_audio = bytearray()
    out_rate = RATE
    async with websockets.connect(url, max_size=2**22) as ws:

        async def speak() -> None:
            if text is not None:
                await ws.send(json.dumps({"type": "text.input", "text": text}))
                return
            assert wav is not None
            pcm = read_wav(wav) + b"\0\0" * RATE  # a second of silence ends the turn
            piece = RATE * 2 * CHUNK_MS // 1000
            await ws.send(json.dumps({"type": "user.audio.start", "utteranceId": "mic"}))
            started = time.monotonic()
            for index, offset in enumerate(range(0, len(pcm), piece)):
                await ws.send(pcm[offset : offset + piece])  # binary frame: next chunk
                # Real time, like a microphone.
                await asyncio.sleep(
                    max(0.0, started + (index + 1) * CHUNK_MS / 1000 - time.monotonic())
                )

        speaker = None
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "session.created":
                out_rate = frame["session"]["output_format"]["sample_rate_hz"]
                speaker = asyncio.ensure_future(speak())
            line = describe(frame)
            if line:
                print(line, flush=True)
            if frame["type"] == "agent.audio.chunk":
                agent_audio += base64.b64decode(frame["audio"])
            if frame["type"] == "turn.metrics" or (
                frame["type"] == "error" and frame["code"] == "room_has_agent"
            ):
                break
        if speaker is not None:
            speaker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await speaker
    if out is not None:
        write_wav(out, bytes(agent_audio), out_rate)
        print(f"wrote {out} ({len(agent_audio) / (2 * out_rate):.1f} s)")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Where bin/serve listens: its PARLEY_HOST and PARLEY_PORT (127.0.0.1:8000).
    host = os.environ.get("PARLEY_HOST") or "127.0.0.1"
    port = os.environ.get("PARLEY_PORT") or "8000"
    parser.add_argument("--url", default=f"ws://{host}:{port}/ws/agent")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--wav", type=Path, help="a 16-bit WAV file of your question")
    source.add_argument("--text", help="a typed question instead")
    parser.add_argument("--out", type=Path, help="write the agent's answer to this WAV file")
    args = parser.parse_args(argv)
    return asyncio.run(converse(args.url, wav=args.wav, text=args.text, out=args.out))


if __name__ == "__main__":
    sys.exit(main())
