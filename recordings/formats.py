"""What a recording client declares at connect. Pure: no Django here.

A client records either raw PCM (its layout declared as sample_rate_hz / channels /
bytes_per_sample, default 16000/1/2) or an encoded container that ffmpeg decodes when the
file is built (webm or ogg Opus as a browser's MediaRecorder sends them, mp3, wav).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from streams.audio import FormatError, PcmFormat

PCM = "pcm"
CONTAINERS = ("webm", "ogg", "mp3", "wav")
# Accepted spellings, MIME subtypes included ("audio/webm;codecs=opus" -> "webm").
FORMAT_NAMES = {
    "pcm": PCM,
    "raw": PCM,
    "l16": PCM,
    "webm": "webm",
    "ogg": "ogg",
    "opus": "ogg",
    "mp3": "mp3",
    "mpeg": "mp3",
    "wav": "wav",
    "wave": "wav",
    "x-wav": "wav",
}
# The ffmpeg demuxer of each container: passing it means nothing has to be probed first.
DEMUXERS = {"webm": "matroska", "ogg": "ogg", "mp3": "mp3", "wav": "wav"}
DEFAULT_PCM = PcmFormat(sample_rate_hz=16000, channels=1, bytes_per_sample=2)
# Decoded audio is saved as 16-bit PCM.
DECODED_BYTES_PER_SAMPLE = 2
# Encoded bytes a container may take per second of the length limit: uncompressed 48 kHz
# stereo 16-bit, more than any real encoder (or a wav) needs, so only abuse is refused.
MAX_ENCODED_BYTES_PER_S = 48000 * 2 * 2
# A container recording broadcast to a room is decoded live to 16-bit PCM at this rate (Opus's
# own), mono, unless the client asked for a rate / channel count: the room stream's format must
# be known at connect, before a byte is decoded.
LIVE_RATE_HZ = 48000
LIVE_CHANNELS = 1


@dataclass(frozen=True, slots=True)
class RecordingFormat:
    """`container` is "pcm" or a name in CONTAINERS.

    For PCM, `pcm` is the layout of every chunk and of the saved WAV. A container is decoded
    to 16-bit PCM at the source's rate and channels, unless `decode_rate_hz` /
    `decode_channels` ask ffmpeg to resample or mix.
    """

    container: str = PCM
    pcm: PcmFormat = DEFAULT_PCM
    decode_rate_hz: int | None = None
    decode_channels: int | None = None

    @property
    def is_pcm(self) -> bool:
        return self.container == PCM

    @property
    def demuxer(self) -> str:
        return DEMUXERS[self.container]

    @property
    def live_pcm(self) -> PcmFormat:
        """The PCM a room hears of this (container) recording while it is captured."""
        return PcmFormat(
            sample_rate_hz=self.decode_rate_hz or LIVE_RATE_HZ,
            channels=self.decode_channels or LIVE_CHANNELS,
            bytes_per_sample=DECODED_BYTES_PER_SAMPLE,
        )


def _format_name(raw: Any) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise FormatError("format", "format must be a string such as 'pcm' or 'webm'.")
    name = raw.strip().lower().split(";", 1)[0].strip()
    name = name.rsplit("/", 1)[-1]
    if name not in FORMAT_NAMES:
        choices = ", ".join([PCM, *CONTAINERS])
        raise FormatError("format", f"format must be one of {choices}; got {raw!r}.")
    return FORMAT_NAMES[name]


def _int_param(params: Mapping[str, Any], name: str) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise FormatError(name, f"{name} must be an integer, got {value!r}.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    raise FormatError(name, f"{name} must be an integer, got {value!r}.")


def parse_format(params: Mapping[str, Any]) -> RecordingFormat:
    """The declared format of a session, from Socket.IO auth or query parameters."""
    container = _format_name(params["format"]) if params.get("format") is not None else PCM
    rate = _int_param(params, "sample_rate_hz")
    channels = _int_param(params, "channels")
    width = _int_param(params, "bytes_per_sample")
    if container == PCM:
        fmt = PcmFormat(
            sample_rate_hz=rate or DEFAULT_PCM.sample_rate_hz,
            channels=channels or DEFAULT_PCM.channels,
            bytes_per_sample=width or DEFAULT_PCM.bytes_per_sample,
        )
        return RecordingFormat(container=PCM, pcm=fmt.validate())
    if width is not None and width != DECODED_BYTES_PER_SAMPLE:
        raise FormatError(
            "bytes_per_sample",
            f"{container} audio is decoded to 16-bit PCM; bytes_per_sample must be 2 or unset.",
        )
    # Range checks only: what was not asked for follows the source.
    PcmFormat(
        sample_rate_hz=rate or DEFAULT_PCM.sample_rate_hz,
        channels=channels or DEFAULT_PCM.channels,
        bytes_per_sample=DECODED_BYTES_PER_SAMPLE,
    ).validate()
    return RecordingFormat(container=container, decode_rate_hz=rate, decode_channels=channels)
