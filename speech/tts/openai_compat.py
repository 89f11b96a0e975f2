"""An engine that streams from any OpenAI-compatible speech server.

``POST {base_url}/audio/speech`` with ``response_format: "pcm"`` and reads the body as it
arrives. Raw PCM (OpenAI sends 24 kHz 16-bit mono) is passed on; a WAV body (Chatterbox and
others answer WAV whatever is asked) is unwrapped, and resampled / downmixed to this engine's
format when its header says otherwise. Voice cloning uploads the sample as multipart to
``{base_url}/audio/speech/upload`` (Chatterbox's endpoint; the path is configurable).

Two ways in: :meth:`OpenAICompatEngine.synthesize` (blocking, for threads; cancelling shuts
the socket down so a stalled read returns at once) and :meth:`OpenAICompatEngine.asynthesize`
(native asyncio, used by :func:`speech.tts.base.astream`; task cancellation closes the
connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import struct
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import httpx

from .base import (
    EngineCapabilities,
    EngineUnavailable,
    SynthChunk,
    SynthesisError,
    TTSEngine,
    VoiceInfo,
    VoiceNotFound,
    VoiceSample,
)

__all__ = ["OPENAI_VOICES", "OpenAICompatEngine"]

OPENAI_VOICES: tuple[str, ...] = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)
_CORE_FIELDS = frozenset({"model", "input", "voice", "response_format", "speed"})
_ERROR_BODY_LIMIT = 2000


class _PcmDecoder:
    """Turns response bytes into whole PCM16 mono samples at the engine's rate.

    Handles a raw PCM body, or a WAV body whose header arrives in pieces; resamples with soxr
    and averages channels when the WAV header disagrees with the engine's format.
    """

    def __init__(self, sample_rate: int, body_is_wav: bool | None) -> None:
        self._target_rate = sample_rate
        self._is_wav = body_is_wav  # None: decide from the first bytes
        self._header_done = False
        self._buffer = bytearray()
        self._channels = 1
        self._resampler: Any = None

    def feed(self, data: bytes) -> bytes:
        self._buffer += data
        if self._is_wav is None:
            if len(self._buffer) < 4:
                return b""
            self._is_wav = bytes(self._buffer[:4]) == b"RIFF"
        if self._is_wav and not self._header_done and not self._parse_header():
            return b""
        frame = 2 * self._channels
        usable = len(self._buffer) - len(self._buffer) % frame
        pcm = bytes(self._buffer[:usable])
        del self._buffer[:usable]
        return self._convert(pcm, last=False)

    def flush(self) -> bytes:
        # A trailing odd byte cannot be a sample: drop it.
        self._buffer.clear()
        return self._convert(b"", last=True) if self._resampler is not None else b""

    def _parse_header(self) -> bool:
        buffer = self._buffer
        if len(buffer) < 12:
            return False
        if bytes(buffer[8:12]) != b"WAVE":
            raise SynthesisError("server answered RIFF data that is not WAVE")
        offset = 12
        while True:
            if len(buffer) < offset + 8:
                return False
            chunk_id = bytes(buffer[offset : offset + 4])
            (size,) = struct.unpack_from("<I", buffer, offset + 4)
            body = offset + 8
            if chunk_id == b"data":
                del buffer[:body]
                self._header_done = True
                return True
            if len(buffer) < body + size:
                return False
            if chunk_id == b"fmt ":
                audio_format, channels, rate = struct.unpack_from("<HHI", buffer, body)
                (bits,) = struct.unpack_from("<H", buffer, body + 14)
                if audio_format not in (1, 0xFFFE) or bits != 16:
                    raise SynthesisError(
                        f"server sent WAV format {audio_format} with {bits}-bit samples; "
                        "only 16-bit PCM is supported"
                    )
                self._channels = channels
                if rate != self._target_rate:
                    import soxr

                    self._resampler = soxr.ResampleStream(rate, self._target_rate, 1, dtype="int16")
            offset = body + size + (size & 1)  # chunks are word aligned

    def _convert(self, pcm: bytes, *, last: bool) -> bytes:
        if self._channels == 1 and self._resampler is None:
            return pcm
        import numpy as np

        samples = np.frombuffer(pcm, dtype="<i2")
        if self._channels > 1:
            samples = samples.reshape(-1, self._channels).mean(axis=1).astype("<i2")
        if self._resampler is not None:
            samples = self._resampler.resample_chunk(samples, last=last)
        return samples.astype("<i2").tobytes()


def _content_is_wav(content_type: str) -> bool | None:
    kind = content_type.split(";")[0].strip().lower()
    if kind in ("audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave"):
        return True
    if kind in ("audio/pcm", "audio/l16", "audio/raw"):
        return False
    if kind in ("", "application/octet-stream"):
        return None  # sniff the RIFF magic
    raise SynthesisError(f"server answered {kind!r}; this engine reads PCM or WAV only")


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    # Building one costs ~50 ms (loading CA certificates); share it between clients.
    return httpx.create_ssl_context()


def _shutdown_socket_on_cancel(
    response: httpx.Response, cancel: threading.Event, done: threading.Event
) -> None:
    """Unblock a read stuck on a silent server: shutting the socket down ends it at once."""
    while not done.is_set():
        if cancel.wait(0.05):
            stream = response.extensions.get("network_stream")
            sock = stream.get_extra_info("socket") if stream is not None else None
            if isinstance(sock, socket.socket):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            return


class OpenAICompatEngine(TTSEngine):
    """Streams PCM from an OpenAI-compatible ``/audio/speech`` endpoint."""

    capabilities = EngineCapabilities(
        voice_cloning=True,
        word_marks=False,
        sentence_marks=False,
        params=frozenset({"speed", "instructions"}),
        forwards_params=True,
        speed_range=(0.25, 4.0),
        notes=(
            "every entry of params is forwarded to the server in the request body, so "
            "server-specific knobs (exaggeration, cfg_weight, temperature...) work when the "
            "server knows them"
        ),
    )

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        model: str = "tts-1",
        sample_rate: int = 24000,
        voices: tuple[str, ...] | list[str] = OPENAI_VOICES,
        default_voice: str = "alloy",
        strict_voices: bool = False,
        speech_path: str = "/audio/speech",
        upload_path: str = "/audio/speech/upload",
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        headers: Mapping[str, str] | None = None,
        name: str = "openai",
    ) -> None:
        self.name = name
        self.sample_rate = sample_rate
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.speech_path = speech_path
        self.upload_path = upload_path
        self._voice_ids = tuple(voices)
        self._default_voice = default_voice
        # Servers other than OpenAI have their own voice names: only check when asked to.
        self._strict_voices = strict_voices
        self._timeout = httpx.Timeout(timeout, connect=connect_timeout)
        self._headers = {"Accept": "audio/pcm, audio/wav;q=0.9, */*;q=0.1", **(headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._client: httpx.Client | None = None
        self._client_lock = threading.Lock()
        # An httpx.AsyncClient belongs to the event loop it first ran on.
        self._async_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, httpx.AsyncClient
        ] = weakref.WeakKeyDictionary()

    @property
    def default_voice(self) -> str:
        return self._default_voice

    def voices(self) -> list[VoiceInfo]:
        return [VoiceInfo(id=voice, name=voice) for voice in self._voice_ids]

    def check_request(
        self,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        voice_sample: VoiceSample | None = None,
    ) -> None:
        if not (speed > 0):
            raise ValueError("speed must be positive")
        if voice is not None and self._strict_voices and voice not in self._voice_ids:
            raise VoiceNotFound(voice, self.name)

    # -- request building -------------------------------------------------------------------

    def _request(
        self,
        text: str,
        voice: str | None,
        speed: float,
        params: Mapping[str, Any] | None,
        voice_sample: VoiceSample | None,
    ) -> dict[str, Any]:
        self.check_request(voice=voice, speed=speed, voice_sample=voice_sample)
        fields: dict[str, Any] = {
            key: value for key, value in (params or {}).items() if key not in _CORE_FIELDS
        }
        fields.update(
            model=(params or {}).get("model") or self.model,
            input=text,
            voice=voice or self._default_voice,
            response_format="pcm",
            speed=self.clamp_speed(speed),
        )
        if voice_sample is None:
            return {"url": self.base_url + self.speech_path, "json": fields}
        return {
            "url": self.base_url + self.upload_path,
            # multipart fields are strings; None means "not sent"
            "data": {key: str(value) for key, value in fields.items() if value is not None},
            "files": {
                "voice_file": (
                    voice_sample.filename,
                    voice_sample.content,
                    voice_sample.content_type,
                )
            },
        }

    def _error_for(self, status: int, body: bytes) -> SynthesisError:
        detail = body[:_ERROR_BODY_LIMIT].decode("utf-8", "replace").strip()
        return SynthesisError(
            f"speech server answered HTTP {status}: {detail or 'no detail'}", status_code=status
        )

    def _sync_client(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client(
                    timeout=self._timeout, headers=self._headers, verify=_ssl_context()
                )
            return self._client

    # -- blocking -----------------------------------------------------------------------

    def synthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        params: Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        voice_sample: VoiceSample | None = None,
    ) -> Iterator[SynthChunk]:
        request = self._request(text, voice, speed, params, voice_sample)
        return self._stream(request, cancel if cancel is not None else threading.Event())

    def _stream(self, request: dict[str, Any], cancel: threading.Event) -> Iterator[SynthChunk]:
        client = self._sync_client()
        done = threading.Event()
        try:
            with client.stream("POST", **request) as response:
                if response.status_code >= 400:
                    raise self._error_for(response.status_code, response.read())
                decoder = _PcmDecoder(
                    self.sample_rate, _content_is_wav(response.headers.get("content-type", ""))
                )
                threading.Thread(
                    target=_shutdown_socket_on_cancel,
                    args=(response, cancel, done),
                    name=f"tts-{self.name}-cancel",
                    daemon=True,
                ).start()
                for data in response.iter_raw():
                    if cancel.is_set():
                        return
                    if pcm := decoder.feed(data):
                        yield SynthChunk(pcm)
                if pcm := decoder.flush():
                    yield SynthChunk(pcm)
        except httpx.TransportError as error:
            if cancel.is_set():
                return  # our own shutdown of the socket
            if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
                raise EngineUnavailable(
                    f"cannot reach speech server {self.base_url}: {error}"
                ) from error
            raise SynthesisError(f"speech stream from {self.base_url} broke: {error!r}") from error
        finally:
            done.set()

    # -- asyncio ------------------------------------------------------------------------

    def _async_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = httpx.AsyncClient(
                timeout=self._timeout, headers=self._headers, verify=_ssl_context()
            )
            self._async_clients[loop] = client
        return client

    async def asynthesize(
        self,
        text: str,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        params: Mapping[str, Any] | None = None,
        voice_sample: VoiceSample | None = None,
    ) -> AsyncIterator[SynthChunk]:
        """Like :meth:`synthesize` on the event loop; cancel the task or ``aclose()`` to stop."""
        request = self._request(text, voice, speed, params, voice_sample)
        client = self._async_client()
        try:
            async with client.stream("POST", **request) as response:
                if response.status_code >= 400:
                    raise self._error_for(response.status_code, await response.aread())
                decoder = _PcmDecoder(
                    self.sample_rate, _content_is_wav(response.headers.get("content-type", ""))
                )
                async for data in response.aiter_raw():
                    if pcm := decoder.feed(data):
                        yield SynthChunk(pcm)
                if pcm := decoder.flush():
                    yield SynthChunk(pcm)
        except httpx.TransportError as error:
            if isinstance(error, httpx.ConnectError | httpx.ConnectTimeout):
                raise EngineUnavailable(
                    f"cannot reach speech server {self.base_url}: {error}"
                ) from error
            raise SynthesisError(f"speech stream from {self.base_url} broke: {error!r}") from error

    async def aclose(self) -> None:
        client = self._async_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
