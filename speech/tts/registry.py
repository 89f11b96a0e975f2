"""Build and cache engines from a plain config dict; map OpenAI model and voice names.

The config is plain data (the Django layer passes a settings value; nothing here imports
Django)::

    {
        "default": "espeak",                      # engine used for tts-1, tts-1-hd, ...
        "engines": {
            "espeak": {},                         # kind defaults to the entry's name
            "joe": {"kind": "piper", "model_path": "/voices/en_US-joe-medium.onnx"},
            "openai": {"base_url": "https://api.example/v1", "api_key": "..."},
        },
        "models": {"tts-1-hd": "joe"},            # optional: model name -> engine name
    }

Each entry's keys other than ``kind`` and ``voice_map`` are the engine constructor's keyword
arguments. ``voice_map`` overrides how OpenAI voice names map onto that engine's voices.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .base import TTSEngine, TTSError

__all__ = [
    "ENGINE_KINDS",
    "OPENAI_MODELS",
    "OPENAI_VOICE_TO_ESPEAK",
    "EngineRegistry",
    "ModelNotFound",
    "ResolvedEngine",
    "build_engine",
]

OPENAI_MODELS: tuple[str, ...] = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
# OpenAI's dated snapshots ("gpt-4o-mini-tts-2025-12-15", "tts-1-1106"): the SDKs' model type
# lists them, so an unchanged client may send one; each is an alias of its model.
_SNAPSHOT = re.compile(r"^(?P<model>.+?)-(?:\d{4}-\d{2}-\d{2}|\d{4})$")

# OpenAI voice -> eSpeak NG voice. Each is a distinct base voice / variant pair, so the thirteen
# names (the openai SDK's list: speech_create_params.Voice) sound different; genders follow
# OpenAI's voices (fable is British).
# | OpenAI  | eSpeak         | why                                                  |
# |---------|----------------|------------------------------------------------------|
# | alloy   | en-us          | espeak's plain American voice: the neutral default   |
# | ash     | en-us+m3       | male, mid pitch (80-122 Hz)                          |
# | ballad  | en-us+m7       | male, soft formants, wide pitch range                |
# | coral   | en-us+f3       | female, bright (140-240 Hz)                          |
# | echo    | en-us+m1       | male, slight flutter                                 |
# | fable   | en-gb-x-rp+m4  | British Received Pronunciation, male                 |
# | onyx    | en-us+m8       | male, deepest pitch (65-102 Hz)                      |
# | nova    | en-us+f4       | female                                               |
# | sage    | en-us+f2       | female, breathy                                      |
# | shimmer | en-us+f5       | female, highest pitch (160-228 Hz), breathy          |
# | verse   | en-us+m6       | male, tense formants                                 |
# | marin   | en-us+f1       | female, the plain female variant                     |
# | cedar   | en-us+m2       | male, low and even                                   |
OPENAI_VOICE_TO_ESPEAK: dict[str, str] = {
    "alloy": "en-us",
    "ash": "en-us+m3",
    "ballad": "en-us+m7",
    "coral": "en-us+f3",
    "echo": "en-us+m1",
    "fable": "en-gb-x-rp+m4",
    "onyx": "en-us+m8",
    "nova": "en-us+f4",
    "sage": "en-us+f2",
    "shimmer": "en-us+f5",
    "verse": "en-us+m6",
    "marin": "en-us+f1",
    "cedar": "en-us+m2",
}


class ModelNotFound(TTSError):
    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"unknown model {model!r}")


def _espeak(**options: Any) -> TTSEngine:
    from .espeak import EspeakEngine

    return EspeakEngine(**options)


def _piper(**options: Any) -> TTSEngine:
    from .piper import PiperEngine

    return PiperEngine(**options)


def _openai(**options: Any) -> TTSEngine:
    from .openai_compat import OpenAICompatEngine

    return OpenAICompatEngine(**options)


# Imported on use, so a deployment without piper-tts or httpx can still run espeak.
ENGINE_KINDS: dict[str, Callable[..., TTSEngine]] = {
    "espeak": _espeak,
    "piper": _piper,
    "openai": _openai,
}

_REGISTRY_KEYS = frozenset({"kind", "voice_map"})
_DEFAULT_CONFIG: Mapping[str, Any] = {"default": "espeak", "engines": {"espeak": {}}}


def build_engine(kind: str, **options: Any) -> TTSEngine:
    """A new engine of ``kind`` (``espeak``, ``piper``, ``openai``); raises ``ValueError``
    for an unknown kind and :class:`EngineUnavailable` when it cannot run here."""
    try:
        factory = ENGINE_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown engine kind {kind!r}; known: {sorted(ENGINE_KINDS)}") from None
    return factory(**options)


@dataclass(frozen=True, slots=True)
class ResolvedEngine:
    engine: TTSEngine
    engine_name: str
    voice: str | None  # the engine's own voice id, None for its default


class EngineRegistry:
    """Engines by name, built on first use and then shared (they are thread-safe)."""

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        config = config or _DEFAULT_CONFIG
        self._entries: dict[str, dict[str, Any]] = {
            name: dict(entry or {}) for name, entry in (config.get("engines") or {}).items()
        }
        if not self._entries:
            self._entries = {"espeak": {}}
        self.default_name: str = config.get("default") or next(iter(self._entries))
        if self.default_name not in self._entries:
            raise ValueError(f"default engine {self.default_name!r} is not configured")
        self._models: dict[str, str] = {model: self.default_name for model in OPENAI_MODELS}
        self._models.update(config.get("models") or {})
        for model, engine_name in self._models.items():
            if engine_name not in self._entries:
                raise ValueError(f"model {model!r} maps to unconfigured engine {engine_name!r}")
        self._engines: dict[str, TTSEngine] = {}
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        return list(self._entries)

    def models(self) -> dict[str, str]:
        return dict(self._models)

    def kind_of(self, name: str) -> str:
        return str(self._entries[name].get("kind", name))

    def engine(self, name: str | None = None) -> TTSEngine:
        name = name or self.default_name
        if name not in self._entries:
            raise ModelNotFound(name)
        with self._lock:
            if name not in self._engines:
                entry = self._entries[name]
                options = {k: v for k, v in entry.items() if k not in _REGISTRY_KEYS}
                self._engines[name] = build_engine(self.kind_of(name), **options)
            return self._engines[name]

    def engine_name_for_model(self, model: str | None) -> str:
        if not model:
            return self.default_name
        if model in self._models:
            return self._models[model]
        if model in self._entries:
            return model
        snapshot = _SNAPSHOT.match(model)
        if snapshot and snapshot["model"] in self._models:
            return self._models[snapshot["model"]]
        raise ModelNotFound(model)

    def map_voice(self, engine_name: str, voice: str | None) -> str | None:
        """Translate an OpenAI voice name for the engine; other names pass through."""
        if voice is None:
            return None
        custom = self._entries[engine_name].get("voice_map") or {}
        if voice in custom:
            return str(custom[voice])
        kind = self.kind_of(engine_name)
        if kind == "espeak" and voice in OPENAI_VOICE_TO_ESPEAK:
            return OPENAI_VOICE_TO_ESPEAK[voice]
        if kind == "piper" and voice in OPENAI_VOICE_TO_ESPEAK:
            return None  # a Piper model is one voice: OpenAI names all mean that voice
        return voice

    def resolve(self, model: str | None = None, voice: str | None = None) -> ResolvedEngine:
        """The engine and engine voice for an OpenAI-style ``model`` / ``voice`` pair."""
        engine_name = self.engine_name_for_model(model)
        return ResolvedEngine(
            engine=self.engine(engine_name),
            engine_name=engine_name,
            voice=self.map_voice(engine_name, voice),
        )

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()
