"""The process's speech-to-text engines, built from Django settings (PARLEY_STT_*).

The engines themselves live in :mod:`agents.engines.stt` (no Django there); this module only
reads settings and caches one engine per kind, so every caller shares one Whisper model and
one transcription thread.
"""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

from agents.engines.stt import STT_KINDS, SttEngine, build_stt

__all__ = ["STT_ENGINES", "clear_stt_cache", "get_stt", "stt_options"]

STT_ENGINES: tuple[str, ...] = STT_KINDS

_engines: dict[str, tuple[tuple[tuple[str, Any], ...], SttEngine]] = {}
_lock = threading.Lock()


def stt_options(kind: str) -> dict[str, Any]:
    """The constructor options of engine ``kind`` from settings (empty for unknown kinds)."""
    if kind == "whisper":
        return {"threads": int(settings.PARLEY_STT_THREADS)}
    if kind == "openai":
        return {
            "base_url": settings.PARLEY_STT_URL,
            "api_key": settings.PARLEY_STT_KEY,
            "model": settings.PARLEY_STT_MODEL,
            "timeout_s": float(settings.PARLEY_STT_TIMEOUT_S),
        }
    return {}


def get_stt(kind: str | None = None) -> SttEngine:
    """The engine of ``kind`` (default: PARLEY_STT_ENGINE), built once and cached.

    Cheap after the first call; construction loads no model (call ``await engine.warm()``
    for that). Changed settings (tests' ``override_settings``) build a new engine. Raises
    :class:`agents.engines.stt.SttUnavailable` for an unknown kind or an engine that cannot
    run here (e.g. "openai" without PARLEY_STT_URL); failures are not cached.
    """
    kind = (kind or settings.PARLEY_STT_ENGINE or "whisper").strip().lower()
    options = stt_options(kind)
    key = tuple(sorted(options.items()))
    with _lock:
        cached = _engines.get(kind)
        if cached is not None and cached[0] == key:
            return cached[1]
        # A replaced engine is not closed: a request may still be using it.
        engine = build_stt(kind, **options)
        _engines[kind] = (key, engine)
        return engine


def clear_stt_cache() -> None:
    """Forget the cached engines (tests)."""
    with _lock:
        _engines.clear()
