"""Health, memory, models and the latest progress: what operators and clients ask about."""

from __future__ import annotations

import gc
import os
import resource
import sys
import tracemalloc
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import connection
from django.utils import timezone

from speech import selectors
from speech.models import ACTIVE_JOB_STATUSES, SpeechJob
from speech.services import KNOB_EFFECTS, active_jobs, engine_for, get_registry
from speech.tts import OPENAI_MODELS, TTSEngine
from streams.errors import ApiError
from streams.runtime import runtime


def _latest_record() -> SpeechJob | None:
    # A row still active but not heartbeated this long belongs to a process that died (the
    # sweeper marks it abandoned; this also holds where no sweeper runs).
    cutoff = timezone.now() - timedelta(seconds=settings.PARLEY_SPEECH_JOB_STALE_S)
    return (
        SpeechJob.objects.filter(status__in=ACTIVE_JOB_STATUSES, updated_at__gte=cutoff)
        .order_by("-created_at")
        .first()
    )


async def latest_progress() -> dict[str, Any]:
    """The seed's progress for the most recent active job in any process, or idle."""
    local = max(active_jobs(), key=lambda job: job.created_at, default=None)
    record = await runtime.run_db(_latest_record)
    if local is not None and (record is None or local.created_at >= record.created_at):
        return selectors.progress_of(local)
    if record is not None:
        return selectors.progress_of(record)
    return dict(selectors.IDLE_PROGRESS)


# --- models --------------------------------------------------------------------------------


async def _engine_entry(name: str) -> dict[str, Any]:
    registry = get_registry()
    kind = registry.kind_of(name)
    entry: dict[str, Any] = {"engine": name, "kind": kind, "available": True, "error": None}
    try:
        engine: TTSEngine | None = await engine_for(registry, name)
    except Exception as error:
        engine = None
        entry.update(available=False, error=str(error))
    effects = KNOB_EFFECTS.get(kind, {"effective": {}, "accepted_without_effect": {}})
    caps = engine.capabilities if engine is not None else None
    entry.update(
        sample_rate=engine.sample_rate if engine else None,
        default_voice=engine.default_voice if engine else None,
        voice_cloning=caps.voice_cloning if caps else None,
        word_marks=caps.word_marks if caps else None,
        speed_range=list(caps.speed_range) if caps else None,
        voices_url=f"/v1/voices?engine={name}",
        params={
            "effective": effects["effective"],
            "accepted_without_effect": effects["accepted_without_effect"],
            "engine_notes": caps.notes if caps else "",
        },
    )
    return entry


def _model(model_id: str, engine: dict[str, Any]) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "parley", **engine}


async def models() -> dict[str, Any]:
    """OpenAI's model list, each entry saying which engine answers it and what its knobs do."""
    registry = get_registry()
    engines = {name: await _engine_entry(name) for name in registry.names()}
    data = [_model(model, engines[engine]) for model, engine in registry.models().items()]
    data += [_model(name, engines[name]) for name in registry.names()]
    return {"object": "list", "data": data, "default_engine": registry.default_name}


async def model(model_id: str) -> dict[str, Any]:
    for entry in (await models())["data"]:
        if entry["id"] == model_id:
            return entry
    raise ApiError("model_not_found", f"No model {model_id!r}.", field="model", status_code=404)


# --- health and memory ---------------------------------------------------------------------


def _database_ok() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


async def health() -> dict[str, Any]:
    registry = get_registry()
    engines = {name: await _engine_entry(name) for name in registry.names()}
    try:
        database = await runtime.run_db(_database_ok)
    except Exception as error:
        database = f"error: {error}"
    default_ok = engines[registry.default_name]["available"]
    return {
        "status": "healthy" if default_ok and database == "ok" else "unhealthy",
        "model_loaded": default_ok,
        "default_engine": registry.default_name,
        "openai_models": list(OPENAI_MODELS),
        "engines": {
            name: {key: entry[key] for key in ("kind", "available", "error", "sample_rate")}
            for name, entry in engines.items()
        },
        "database": database,
        "active_jobs": len(active_jobs()),
    }


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory(*, cleanup: bool = False) -> dict[str, Any]:
    """Process memory, Python heap and GC state, and this process's active jobs."""
    collected = gc.collect() if cleanup else None
    rss_kb = _proc_status_kb("VmRSS")
    peak_kb = _proc_status_kb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    traced = tracemalloc.get_traced_memory() if tracemalloc.is_tracing() else None
    jobs = active_jobs()
    return {
        "memory_info": {
            "rss_mb": round(rss_kb / 1024, 2) if rss_kb is not None else None,
            "peak_rss_mb": round(peak_kb / 1024, 2),
            "python_allocated_blocks": sys.getallocatedblocks(),
            "tracemalloc_current_mb": round(traced[0] / 2**20, 2) if traced else None,
            "gc_counts": list(gc.get_count()),
            "gc_collections": [generation["collections"] for generation in gc.get_stats()],
            "gc_objects": len(gc.get_objects()),
        },
        "pid": os.getpid(),
        "active_jobs": len(jobs),
        "jobs": [
            {"job_id": str(job.id), "kind": job.kind, "status": job.status, "engine": job.engine}
            for job in jobs
        ],
        "cleanup": {"performed": cleanup, "collected_objects": collected},
    }
