"""Text-to-speech engines: pure Python, no Django.

Engines yield PCM16LE mono chunks as they synthesize; :func:`astream` feeds them to asyncio.
Concrete engines live in ``espeak``, ``piper`` and ``openai_compat`` and are imported on use
by :class:`EngineRegistry`, so optional dependencies stay optional.
"""

from .base import (
    EngineCapabilities,
    EngineUnavailable,
    Mark,
    SynthChunk,
    SynthesisError,
    TTSEngine,
    TTSError,
    UnsupportedFeature,
    VoiceInfo,
    VoiceNotFound,
    VoiceSample,
    astream,
)
from .registry import (
    OPENAI_MODELS,
    OPENAI_VOICE_TO_ESPEAK,
    EngineRegistry,
    ModelNotFound,
    ResolvedEngine,
    build_engine,
)
from .text import STRATEGIES, TextSpan, has_speech, sentence_spans, split_spans, split_text

__all__ = [
    "OPENAI_MODELS",
    "OPENAI_VOICE_TO_ESPEAK",
    "STRATEGIES",
    "EngineCapabilities",
    "EngineRegistry",
    "EngineUnavailable",
    "Mark",
    "ModelNotFound",
    "ResolvedEngine",
    "SynthChunk",
    "SynthesisError",
    "TTSEngine",
    "TTSError",
    "TextSpan",
    "UnsupportedFeature",
    "VoiceInfo",
    "VoiceNotFound",
    "VoiceSample",
    "astream",
    "build_engine",
    "has_speech",
    "sentence_spans",
    "split_spans",
    "split_text",
]
