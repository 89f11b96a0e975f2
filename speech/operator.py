"""The seed system's operator endpoints (Chatterbox TTS API), in its shapes.

Status, history and statistics are read from the SpeechJob records, so they cover every
worker and survive restarts; "clearing" the history or "resetting" the request counter moves
a marker in the shared settings row (speech.models.SpeechSettings) rather than deleting
records that the admin, progress-by-id and other surfaces still read. Memory figures are this
process's (each worker has its own heap). The voice library's aliases and default voice are
rows too (VoiceAlias, SpeechSettings), so every worker resolves them alike.

Database work runs on a database thread (runtime.run_db); the async functions here are what
the views call.
"""

from __future__ import annotations

import gc
import os
import platform
import re
import time
import tracemalloc
from datetime import datetime, timedelta
from pathlib import PurePath
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Avg, Count, Q, Sum
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern
from django.utils import timezone

from speech import selectors, system, voices
from speech.library import settings_row, stored_voice_named
from speech.models import (
    ACTIVE_JOB_STATUSES,
    CacheOutcome,
    JobStatus,
    SpeechJob,
    Voice,
    VoiceAlias,
)
from speech.params import KNOB_DEFAULTS
from speech.services import MAX_SERVICE_CHARS, active_jobs, engine_for, get_registry, voice_check
from speech.tts import TTSError
from streams.errors import ApiError, Conflict
from streams.runtime import runtime

API_NAME = "Parley"
DESCRIPTION = "Server-authoritative real-time speech in shared rooms, with speech synthesis."
STARTED_AT = time.time()  # this process's start (epoch s), for uptime
HISTORY_LIMIT_RANGE = (1, 50)
STATUS_HISTORY_RANGE = (1, 20)
# Memory alerts and recommendations (the seed's defaults; CPU = this process's RSS share).
ALERT_THRESHOLDS = {"cpu_memory_percent": 85.0, "gpu_memory_mb": 8192}
REQUESTS_BEFORE_RESET_ADVICE = 50
MASK = "********"


# --- helpers -------------------------------------------------------------------------------


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")


def flag(raw: str | None, *, name: str, default: bool = False) -> bool:
    """A boolean query flag as FastAPI reads one; 400 `invalid_<name>` for another word."""
    if raw is None:
        return default
    word = raw.strip().lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ApiError(
        f"invalid_{name}",
        f"{name} must be one of {', '.join(TRUE_WORDS + FALSE_WORDS)}.",
        field=name,
    )


def require_confirm(raw: str | None, action: str) -> None:
    """400 `confirmation_required` (field `confirm`) unless the flag is set."""
    if (raw or "").strip().lower() not in TRUE_WORDS:
        raise ApiError(
            "confirmation_required",
            f"{action} requires confirmation: add ?confirm=true.",
            field="confirm",
        )


def int_param(raw: str | None, *, name: str, default: int, bounds: tuple[int, int]) -> int:
    """An integer query parameter within `bounds` (inclusive); 400 naming it otherwise."""
    if raw is None or raw == "":
        return default
    low, high = bounds
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise ApiError(
            f"invalid_{name}", f"{name} must be an integer from {low} to {high}.", field=name
        )
    return value


def _epoch(moment: datetime | None) -> float | None:
    return round(moment.timestamp(), 3) if moment else None


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment else None


# --- status, history, statistics -----------------------------------------------------------


def _since(field: str) -> Q:
    marker = getattr(settings_row(), field)
    return Q(created_at__gt=marker) if marker else Q()


def _live_cutoff() -> datetime:
    # An active row not heartbeated this long belongs to a process that died.
    return timezone.now() - timedelta(seconds=settings.PARLEY_SPEECH_JOB_STALE_S)


def _active_records() -> list[SpeechJob]:
    return list(
        SpeechJob.objects.filter(
            status__in=ACTIVE_JOB_STATUSES, updated_at__gte=_live_cutoff()
        ).order_by("-created_at")[:50]
    )


def _voice_source(job: Any) -> str:
    """The voice as the request named it; "upload" for a voice_file, "default" for none."""
    if job.voice_sample_name and not job.voice:
        return "upload"
    return job.voice or "default"


def request_info(job: Any) -> dict[str, Any]:
    """One synthesis in the seed's request shape (its TTSRequestInfo), plus Parley's fields.

    `job` is a SpeechJob row or this process's LiveJob (same attributes).
    """
    progress = selectors.progress_of(job)
    return {
        "request_id": str(job.id),
        "status": progress["status"],
        "start_time": _epoch(job.started_at or job.created_at),
        "end_time": _epoch(job.finished_at),
        "text_length": job.text_chars if hasattr(job, "text_chars") else len(job.text),
        "text_preview": progress["text_preview"],
        "voice_source": _voice_source(job),
        "parameters": {k: v for k, v in (job.params or {}).items() if k != "given"},
        "progress": {
            key: progress[key]
            for key in (
                "current_chunk",
                "total_chunks",
                "current_step",
                "progress_percentage",
                "estimated_completion",
            )
        },
        "error_message": (job.error_detail or job.error) or None,
        "duration_seconds": progress["duration_seconds"],
        "is_active": progress["is_processing"],
        # Parley's own
        "job_id": str(job.id),
        "job_status": job.status,
        "kind": job.kind,
        "endpoint": job.endpoint,
        "engine": job.engine,
        "voice": job.voice or None,
        "engine_voice": job.engine_voice or None,
        "response_format": job.response_format,
        "audio_seconds": round(job.audio_seconds, 3),
        "first_audio_ms": job.first_audio_ms,
        "ttfb_ms": job.ttfb_ms,
        "error": job.error or None,
        "cache": getattr(job, "cache", "") or None,  # "hit", "miss" (speech.cache)
    }


def _history(limit: int) -> list[dict[str, Any]]:
    jobs = SpeechJob.objects.filter(_since("history_cleared_at")).exclude(
        status__in=ACTIVE_JOB_STATUSES
    )
    return [request_info(job) for job in jobs.order_by("-created_at")[:limit]]


def _statistics() -> dict[str, Any]:
    since = settings_row().history_cleared_at
    jobs = SpeechJob.objects.filter(Q(created_at__gt=since) if since else Q())
    counts = jobs.aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(status=JobStatus.COMPLETED)),
        failed=Count("id", filter=Q(status=JobStatus.FAILED)),
        cancelled=Count("id", filter=Q(status=JobStatus.CANCELLED)),
        active=Count(
            "id", filter=Q(status__in=ACTIVE_JOB_STATUSES, updated_at__gte=_live_cutoff())
        ),
        cache_hits=Count("id", filter=Q(cache=CacheOutcome.HIT)),
        cache_misses=Count("id", filter=Q(cache=CacheOutcome.MISS)),
    )
    done = jobs.filter(status=JobStatus.COMPLETED).aggregate(
        duration=Avg("elapsed_seconds"),
        text=Avg("text_chars"),
        audio=Sum("audio_seconds"),
        rtf=Avg("real_time_factor"),
        ttfb=Avg("ttfb_ms"),
        first_audio=Avg("first_audio_ms"),
    )
    failures = {
        row["error"] or "unknown": row["n"]
        for row in jobs.filter(status=JobStatus.FAILED)
        .values("error")
        .annotate(n=Count("id"))
        .order_by("-n")
    }
    by_kind = {
        row["kind"]: row["n"]
        for row in jobs.values("kind").annotate(n=Count("id")).order_by("-n", "kind")
    }
    by_engine = {
        row["engine"]: row["n"]
        for row in jobs.values("engine").annotate(n=Count("id")).order_by("-n", "engine")
    }
    finished = counts["completed"] + counts["failed"]
    looked_up = counts["cache_hits"] + counts["cache_misses"]

    def rounded(value: float | None, digits: int = 3) -> float:
        return round(value or 0.0, digits)

    return {
        "total_requests": counts["total"],
        "completed_requests": counts["completed"],
        "error_requests": counts["failed"],
        "success_rate": round(counts["completed"] / max(1, finished) * 100, 2),
        "average_duration_seconds": rounded(done["duration"]),
        "average_text_length": rounded(done["text"], 1),
        "is_processing": counts["active"] > 0,
        # Parley's own
        "cancelled_requests": counts["cancelled"],
        "active_requests": counts["active"],
        "total_audio_seconds": rounded(done["audio"]),
        "average_real_time_factor": rounded(done["rtf"], 4),
        "average_ttfb_ms": rounded(done["ttfb"], 1),
        "average_first_audio_ms": rounded(done["first_audio"], 1),
        "failures": failures,
        "by_kind": by_kind,
        "by_engine": by_engine,
        # The synthesis cache (docs/speech.md "Cache"): hits served without synthesis,
        # misses looked up and synthesized; hit_rate in percent of the two.
        "cache": {
            "enabled": settings.PARLEY_TTS_CACHE_MAX_BYTES > 0,
            "hits": counts["cache_hits"],
            "misses": counts["cache_misses"],
            "hit_rate": round(counts["cache_hits"] / max(1, looked_up) * 100, 2),
        },
        "since": _iso(since),
        "source": "speech job records (every worker)",
    }


def _current_status() -> dict[str, Any]:
    active = _active_records()
    since = settings_row().history_cleared_at
    total = SpeechJob.objects.filter(Q(created_at__gt=since) if since else Q()).count()
    return {"active": active, "total": total}


async def status(
    *, include_memory: bool, include_history: bool, include_stats: bool, history_limit: int
) -> dict[str, Any]:
    """GET /status: the seed's processing status: the current (most recent active) job, in
    any worker, or idle; `active_jobs` counts them all."""
    found = await runtime.run_db(_current_status)
    records: list[SpeechJob] = found["active"]
    local = {job.id: job for job in active_jobs()}
    # This process's own jobs are fresher than their rows.
    current = [local.get(job.id, job) for job in records]
    current += [job for job in local.values() if job.id not in {r.id for r in records}]
    current.sort(key=lambda job: job.created_at, reverse=True)
    if current:
        body = {**request_info(current[0]), "is_processing": True}
    else:
        body = {
            "status": "idle",
            "is_processing": False,
            "message": "No active requests",
        }
    body["total_requests"] = found["total"]
    body["active_jobs"] = len(current)
    body["active_job_ids"] = [str(job.id) for job in current]
    if include_memory:
        body["memory_info"] = system.memory()["memory_info"]
    if include_history:
        body["request_history"] = await runtime.run_db(_history, history_limit)
    if include_stats:
        body["statistics"] = await runtime.run_db(_statistics)
    return body


async def history(*, limit: int) -> dict[str, Any]:
    """GET /status/history: finished syntheses since the last clear, newest first."""
    records = await runtime.run_db(_history, limit)
    return {"request_history": records, "total_records": len(records), "limit": limit}


async def statistics(*, include_memory: bool = False) -> dict[str, Any]:
    """GET /status/statistics: counts, durations and failures since the last clear."""
    body = await runtime.run_db(_statistics)
    if include_memory:
        body["current_memory"] = system.memory()["memory_info"]
    return body


def _clear_history() -> dict[str, Any]:
    with transaction.atomic():
        row = settings_row()
        previous = row.history_cleared_at
        jobs = SpeechJob.objects.exclude(status__in=ACTIVE_JOB_STATUSES)
        cleared = jobs.filter(created_at__gt=previous).count() if previous else jobs.count()
        row.history_cleared_at = timezone.now()
        row.save(update_fields=["history_cleared_at", "updated_at"])
    return {"cleared_records": cleared, "cleared_at": row.history_cleared_at.isoformat()}


async def clear_history() -> dict[str, Any]:
    """POST /status/history/clear: history and statistics start again from now. The records
    stay (the admin and /v1/status/progress/{id} still read them); active jobs are kept."""
    done = await runtime.run_db(_clear_history)
    return {"success": True, "message": "TTS request history cleared successfully", **done}


# --- memory --------------------------------------------------------------------------------


def _mem_total_kb() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def memory_info(base: dict[str, Any] | None = None) -> dict[str, Any]:
    """This process's memory (speech.system.memory's, or `base` if already read) plus the
    seed's cpu_memory_* keys."""
    info = dict((base or system.memory())["memory_info"])
    rss = info.get("rss_mb")
    total_kb = _mem_total_kb()
    info["cpu_memory_mb"] = rss
    info["cpu_memory_percent"] = (
        round(rss * 1024 / total_kb * 100, 2) if rss is not None and total_kb else None
    )
    info["gpu_memory_allocated_mb"] = 0.0  # no GPU engine here; the key the seed's clients read
    return info


def _request_counter() -> int:
    return SpeechJob.objects.filter(_since("memory_reset_at")).count()


def memory_alerts(info: dict[str, Any], thresholds: dict[str, float]) -> dict[str, Any]:
    """The seed's alert list for `info` (memory_info()): pure."""
    alerts = []
    percent = info.get("cpu_memory_percent") or 0.0
    if percent > thresholds["cpu_memory_percent"]:
        alerts.append(
            {
                "type": "cpu_memory_high",
                "level": "warning",
                "message": f"CPU memory usage is high: {percent:.1f}%",
                "threshold": thresholds["cpu_memory_percent"],
                "current": percent,
            }
        )
    return {"has_alerts": bool(alerts), "alert_count": len(alerts), "alerts": alerts}


async def memory(*, cleanup: bool, include_alerts: bool = True) -> dict[str, Any]:
    """GET /memory: this process's memory, the request counter (syntheses by every worker
    since the last /memory/reset) and, with `cleanup`, a collection pass and what it freed."""
    counter = await runtime.run_db(_request_counter)
    before = system.memory()
    info = memory_info(before)
    body: dict[str, Any] = {
        **before,
        "memory_info": info,
        "request_counter": counter,
        "cleanup_performed": False,
        "cuda_cache_cleared": False,
    }
    if include_alerts:
        body["alerts"] = memory_alerts(info, ALERT_THRESHOLDS)
    if cleanup:
        collected = gc.collect()
        after = memory_info()

        def freed(key: str) -> float | None:
            old, new = info.get(key), after.get(key)
            return round(old - new, 2) if old is not None and new is not None else None

        body.update(
            cleanup_performed=True,
            collected_objects=collected,
            memory_info_after_cleanup=after,
            freed={
                "collected_objects": collected,
                "gc_objects": freed("gc_objects"),
                "python_allocated_blocks": freed("python_allocated_blocks"),
                "rss_mb": freed("rss_mb"),
            },
            cleanup={"performed": True, "collected_objects": collected},
        )
    return body


def _reset_counter() -> int:
    with transaction.atomic():
        row = settings_row()
        previous = _request_counter()
        row.memory_reset_at = timezone.now()
        row.save(update_fields=["memory_reset_at", "updated_at"])
    return previous


async def memory_reset() -> dict[str, Any]:
    """POST /memory/reset?confirm=true: the request counter restarts (for every worker) and
    this process runs a full collection (and restarts tracemalloc's peak if it traces)."""
    previous = await runtime.run_db(_reset_counter)
    collected = gc.collect()
    if tracemalloc.is_tracing():
        tracemalloc.reset_peak()
    return {
        "status": "success",
        "previous_request_counter": previous,
        "request_counter": 0,
        "collected_objects": collected,
        "memory_info": memory_info(),
        "cuda_stats_reset": False,
    }


def _memory_management() -> dict[str, Any]:
    return {
        "memory_cleanup_interval": None,  # Python's GC runs by itself; /memory?cleanup=true
        "cuda_cache_clear_interval": None,
        "enable_memory_monitoring": True,
        "max_chunk_length": KNOB_DEFAULTS.get("streaming_chunk_size"),
        "max_total_length": MAX_SERVICE_CHARS,
    }


def memory_config() -> dict[str, Any]:
    """GET /memory/config: the seed's memory settings, thresholds and devices."""
    return {
        "config": _memory_management(),
        "alert_thresholds": dict(ALERT_THRESHOLDS),
        "device_info": {"cuda_available": False, "cuda_device_count": 0, "current_device": None},
        "tracemalloc": tracemalloc.is_tracing(),
        "pid": os.getpid(),
    }


def recommendations_for(info: dict[str, Any], request_counter: int) -> list[dict[str, Any]]:
    """The seed's recommendation list for `info` (memory_info()) and the counter: pure."""
    found = []
    percent = info.get("cpu_memory_percent") or 0.0
    if percent > 80:
        found.append(
            {
                "type": "cpu_memory",
                "priority": "high",
                "title": "High CPU Memory Usage",
                "description": f"This process uses {percent:.1f}% of the machine's memory",
                "actions": [
                    "Lower PARLEY_DB_THREADS or run more, smaller workers",
                    "Run GET /memory?cleanup=true and compare rss_mb before and after",
                    "Watch rss_mb across requests for steady growth (a leak)",
                ],
            }
        )
    elif percent > 60:
        found.append(
            {
                "type": "cpu_memory",
                "priority": "medium",
                "title": "Moderate CPU Memory Usage",
                "description": f"This process uses {percent:.1f}% of the machine's memory",
                "actions": ["Monitor memory during peak load", "Clean up during heavy loads"],
            }
        )
    if request_counter > REQUESTS_BEFORE_RESET_ADVICE:
        found.append(
            {
                "type": "maintenance",
                "priority": "medium",
                "title": "High Request Count",
                "description": f"{request_counter} syntheses since the last reset",
                "actions": [
                    "Compare memory now with memory after the last reset (POST /memory/reset)",
                    "Monitor for gradual memory increases",
                ],
            }
        )
    if not info.get("tracemalloc_current_mb") and percent > 60:
        found.append(
            {
                "type": "diagnostics",
                "priority": "low",
                "title": "Python allocation tracing is off",
                "description": "Start with PYTHONTRACEMALLOC=1 to see the Python heap's size",
                "actions": ["Set PYTHONTRACEMALLOC=1 for the worker while investigating"],
            }
        )
    return found


async def memory_recommendations() -> dict[str, Any]:
    """GET /memory/recommendations."""
    counter = await runtime.run_db(_request_counter)
    info = memory_info()
    found = recommendations_for(info, counter)
    return {
        "memory_info": info,
        "request_counter": counter,
        "recommendations": found,
        "recommendation_count": len(found),
        "has_critical_issues": any(item["priority"] == "high" for item in found),
    }


# --- info, ping, config, endpoints, languages ----------------------------------------------


def version_info() -> dict[str, Any]:
    version = settings.SPECTACULAR_SETTINGS.get("VERSION", "0")
    return {
        "name": API_NAME,
        "version": version,
        "api_version": version,
        "description": DESCRIPTION,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "django_version": __import__("django").get_version(),
    }


async def info() -> dict[str, Any]:
    """GET /info: version, status, statistics, memory and the last requests in one call."""
    versions = version_info()
    current = await status(
        include_memory=False, include_history=False, include_stats=False, history_limit=1
    )
    stats = await statistics()
    recent = await runtime.run_db(_history, 3)
    return {
        "api_name": versions["name"],
        "version": versions["version"],
        "api_version": versions["api_version"],
        "description": versions["description"],
        "status": "operational",
        "version_info": versions,
        "tts_status": current,
        "statistics": stats,
        "memory_info": memory_info(),
        "recent_requests": recent,
        "uptime_info": {
            "total_requests": stats["total_requests"],
            "success_rate": stats["success_rate"],
            "is_processing": current["is_processing"],
            "uptime_seconds": round(time.time() - STARTED_AT, 1),
            "pid": os.getpid(),
        },
    }


def ping() -> dict[str, str]:
    return {"status": "ok", "message": "Server is running"}


_SECRET_KEY = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|(?:^|_)KEYS?$|API_?KEY", re.I)
_SECRET_QUERY = re.compile(r"pass|secret|token|key|auth|sig", re.I)


def mask_secrets(value: Any, key: str = "") -> Any:
    """`value` made JSON-safe with its secrets masked: the values of keys that name a secret
    (…PASSWORD, …SECRET…, …_KEY, …TOKEN), the password of a URL (``scheme://user:***@host``)
    and secret-looking query parameters of one. Pure."""
    if key and _SECRET_KEY.search(key) and value not in (None, "", [], {}, ()):
        return MASK
    if isinstance(value, dict):
        return {str(k): mask_secrets(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [mask_secrets(item, key) for item in items]
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, str):
        return _mask_url(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return str(value)


def _mask_url(text: str) -> str:
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
        password = parts.password
    except ValueError:
        return text
    netloc = parts.netloc
    if password is not None or (parts.username and "@" in netloc):
        host = netloc.rsplit("@", 1)[1]
        netloc = f"{parts.username or ''}:{MASK}@{host}" if password is not None else netloc
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode(
            [(k, MASK if _SECRET_QUERY.search(k) and v else v) for k, v in pairs], safe="*"
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


_DJANGO_SETTINGS = (
    "DEBUG",
    "ALLOWED_HOSTS",
    "SECRET_KEY",
    "DATABASES",
    "REDIS_URL",
    "CHANNEL_LAYERS",
    "CACHES",
    "TIME_ZONE",
    "MEDIA_ROOT",
    "STATIC_ROOT",
    "DATA_UPLOAD_MAX_MEMORY_SIZE",
    "CORS_ALLOW_ALL_ORIGINS",
    "CORS_ALLOWED_ORIGINS",
    "CSRF_TRUSTED_ORIGINS",
)


def effective_settings() -> dict[str, Any]:
    """Every PARLEY_* setting and the Django settings that shape the service, masked."""
    names = sorted(name for name in dir(settings) if name.startswith("PARLEY_"))
    chosen = {name: getattr(settings, name) for name in _DJANGO_SETTINGS if hasattr(settings, name)}
    chosen.update({name: getattr(settings, name) for name in names})
    return mask_secrets(chosen)


async def config() -> dict[str, Any]:
    """GET /config: the seed's sections, then every effective setting with secrets masked."""
    registry = get_registry()
    try:
        engine = await engine_for(registry, registry.default_name)
        engine_voice, rate = engine.default_voice, engine.sample_rate
    except TTSError:
        engine_voice, rate = None, None
    versions = version_info()
    return {
        "api_info": {
            **{key: versions[key] for key in ("name", "version", "api_version", "description")},
            "license": "see the repository",
            "author": "Parley",
            "python_version": versions["python_version"],
            "platform": versions["platform"],
        },
        "server": {"host": None, "port": None, "pid": os.getpid(), "asgi": "daphne"},
        "model": {
            "device": "cpu",
            "default_engine": registry.default_name,
            "engines": registry.names(),
            "default_voice": engine_voice,
            "sample_rate": rate,
            "voice_sample_path": str(settings.MEDIA_ROOT / "voices"),
            "model_cache_dir": None,
        },
        "defaults": {
            **{key: value for key, value in KNOB_DEFAULTS.items() if value is not None},
            "max_chunk_length": KNOB_DEFAULTS.get("streaming_chunk_size"),
            "max_total_length": MAX_SERVICE_CHARS,
        },
        "memory_management": _memory_management(),
        "settings": effective_settings(),
        "masked": "values of secret settings, URL passwords and secret query parameters",
    }


def _routes(patterns: Any, prefix: str = "") -> list[str]:
    """Every path()-declared route under `patterns`, as /a/{b} (regex routes left out)."""
    found: list[str] = []
    for pattern in patterns:
        if not isinstance(pattern.pattern, RoutePattern):
            continue
        route = prefix + str(pattern.pattern)
        if isinstance(pattern, URLResolver):
            found += _routes(pattern.url_patterns, route)
        elif isinstance(pattern, URLPattern):
            found.append("/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route))
    return found


def _extra_aliases() -> dict[str, list[str]]:
    """The seed's extra names (/processing, /stats, ...) by their /v1/ path."""
    from speech.urls import OPERATOR_ROUTES  # the URLconf imports this module's views

    return {
        f"/v1/{route}": [f"/{alias}" for alias in aliases]
        for route, _view, _name, aliases in OPERATOR_ROUTES
        if aliases
    }


def endpoints() -> dict[str, Any]:
    """GET /endpoints: every route and its aliases, in the seed's shape. The primary path is
    the /v1/ one where both exist; the bare path (the seed's) is its alias."""
    routes = [r for r in _routes(get_resolver().url_patterns) if not r.startswith("/admin/")]
    extra_aliases = _extra_aliases()
    extra = {alias for aliases in extra_aliases.values() for alias in aliases}
    mappings: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route in extra:
            continue
        bare = route.removeprefix("/v1")
        primary = f"/v1{bare}" if f"/v1{bare}" in routes else route
        aliases = [path for path in (f"/v1{bare}", bare) if path in routes and path != primary]
        aliases += [path for path in extra_aliases.get(primary, []) if path in routes]
        mappings[primary] = {"primary": primary, "aliases": aliases}
    for entry in mappings.values():
        entry["total_paths"] = 1 + len(entry["aliases"])
    return {
        "total_endpoints": len(mappings),
        "total_aliases": sum(len(entry["aliases"]) for entry in mappings.values()),
        "mappings": dict(sorted(mappings.items())),
        "description": "This API supports multiple endpoint formats for compatibility",
        "usage": {
            "primary_endpoints": "The /v1/ paths (OpenAI-compatible)",
            "v1_aliases": "The seed's bare paths (/audio/speech, /status, /memory, ...)",
            "example": {
                "primary": "/v1/audio/speech",
                "aliases": ["/audio/speech"],
                "note": "Both paths work identically",
            },
        },
    }


async def languages(*, engine: str | None = None) -> dict[str, Any]:
    """GET /languages: the languages of an engine's voices (the default engine's by default),
    as ``{code, name}``; 400 for an unknown engine, 503 if it cannot be loaded."""
    registry = get_registry()
    name = engine or registry.default_name
    if name not in registry.names():
        raise ApiError(
            "unknown_engine",
            f"Unknown engine {name!r}; configured: {', '.join(registry.names())}.",
            field="engine",
        )
    try:
        built = await engine_for(registry, name)
        listed = built.voices()
    except TTSError as error:
        raise ApiError("engine_unavailable", str(error), field="engine", status_code=503) from None
    found: dict[str, str] = {}
    for voice in listed:
        code = (voice.language or "").strip()
        if code and code != "variant":
            found.setdefault(code, voice.name.replace("_", " ") or code)
    items = [{"code": code, "name": found[code]} for code in sorted(found)]
    if not items:  # an engine that does not say: OpenAI's voices speak what they are given
        items = [{"code": "en", "name": "English"}]
    return {
        "languages": items,
        "count": len(items),
        "model_type": "multilingual" if len(items) > 1 else "standard",
        "engine": name,
    }


# --- voice library: aliases, all names, default voice, rename -------------------------------


def _no_stored_voice(name: str) -> ApiError:
    return ApiError(
        "voice_not_found",
        f"No stored voice named {name!r}. Aliases and renames are for stored voices: store an "
        "engine voice under a name first (POST /v1/voices with a preset).",
        field="name",
        status_code=404,
    )


def _alias_list(voice: Voice) -> list[str]:
    return list(voice.aliases.order_by("alias").values_list("alias", flat=True))


def _aliases_of(name: str) -> dict[str, Any]:
    voice = stored_voice_named(name)
    if voice is None:
        raise _no_stored_voice(name)
    aliases = _alias_list(voice)
    return {"voice_name": voice.name, "aliases": aliases, "count": len(aliases)}


async def aliases_of(name: str) -> dict[str, Any]:
    """GET /v1/voices/{name}/aliases (`name` may itself be an alias)."""
    return await runtime.run_db(_aliases_of, name)


async def alias_add(*, name: str, alias: Any) -> dict[str, Any]:
    """POST /v1/voices/{name}/aliases: `alias` becomes another name of stored voice `name`.

    400 invalid_alias; 404 if `name` is no stored voice; 409 alias_exists when the alias is
    taken by a voice (stored, OpenAI's or an engine's) or another alias."""
    if not isinstance(alias, str) or not alias.strip():
        raise ApiError("invalid_alias", "alias must be a non-empty string.", field="alias")
    alias = alias.strip()
    try:
        await voices._check_name(alias)
    except ApiError as error:
        code = "alias_exists" if error.status_code == 409 else "invalid_alias"
        raise type(error)(code, error.detail.replace("name", "alias", 1), field="alias") from None

    def add() -> dict[str, Any]:
        voice = stored_voice_named(name)
        if voice is None:
            raise _no_stored_voice(name)
        if Voice.objects.filter(name=alias).exists():
            raise Conflict("alias_exists", f"{alias!r} is a stored voice.", field="alias")
        try:
            with transaction.atomic():
                VoiceAlias.objects.create(alias=alias, voice=voice)
        except IntegrityError:
            owner = VoiceAlias.objects.filter(alias=alias).values_list("voice__name", flat=True)
            raise Conflict(
                "alias_exists",
                f"{alias!r} is already an alias of {next(iter(owner), '?')!r}.",
                field="alias",
            ) from None
        return {
            "message": "Alias added successfully",
            "voice_name": voice.name,
            "alias": alias,
            "aliases": _alias_list(voice),
        }

    return await runtime.run_db(add)


async def alias_remove(*, name: str, alias: str) -> dict[str, Any]:
    """DELETE /v1/voices/{name}/aliases/{alias}; 404 if the voice or that alias of it is
    not there."""

    def remove() -> dict[str, Any]:
        voice = stored_voice_named(name)
        if voice is None:
            raise _no_stored_voice(name)
        deleted, _ = VoiceAlias.objects.filter(voice=voice, alias=alias).delete()
        if not deleted:
            raise ApiError(
                "alias_not_found",
                f"Voice {voice.name!r} has no alias {alias!r}.",
                field="alias",
                status_code=404,
            )
        return {
            "message": "Alias removed successfully",
            "voice_name": voice.name,
            "alias": alias,
            "aliases": _alias_list(voice),
        }

    return await runtime.run_db(remove)


def _all_names() -> dict[str, Any]:
    names = list(Voice.objects.values_list("name", flat=True))
    aliases = dict(VoiceAlias.objects.values_list("alias", "voice__name"))
    every = sorted({*names, *aliases})
    return {"voice_names": every, "count": len(every), "aliases": dict(sorted(aliases.items()))}


async def all_names() -> dict[str, Any]:
    """GET /v1/voices/all-names: the stored voices' names and aliases (`aliases`: alias ->
    voice). OpenAI's and the engines' voices are in GET /v1/voices."""
    return await runtime.run_db(_all_names)


def _default_row() -> tuple[str | None, str, Voice | None]:
    row = settings_row()
    if row.default_voice_id is not None:
        voice = Voice.objects.get(pk=row.default_voice_id)
        return voice.name, "voice_library", voice
    if row.default_builtin:
        return row.default_builtin, "builtin", None
    return None, "engine_default", None


async def _engine_default() -> dict[str, Any]:
    registry = get_registry()
    try:
        engine = await engine_for(registry, registry.default_name)
        voice = engine.default_voice
    except TTSError:
        voice = None
    return {"engine": registry.default_name, "engine_voice": voice}


async def default_voice() -> dict[str, Any]:
    """GET /v1/voices/default: the voice a request without `voice` is spoken with."""
    name, source, voice = await runtime.run_db(_default_row)
    body: dict[str, Any] = {"default_voice": name, "source": source}
    if voice is not None:
        body["voice_info"] = await voices.voice_detail(voice.name)
    elif name is not None:
        body["voice_info"] = await voices.voice_detail(name)
    else:
        body.update(await _engine_default())
    return body


async def default_voice_set(*, name: Any) -> dict[str, Any]:
    """POST /v1/voices/default with `voice_name`: any voice a request could name (stored,
    an alias, OpenAI's, an engine's). 404 voice_not_found if it resolves to none."""
    if not isinstance(name, str) or not name.strip():
        raise ApiError(
            "invalid_voice_name", "voice_name must be a non-empty string.", field="voice_name"
        )
    name = name.strip()
    try:
        await voice_check(voice=name)
    except ApiError as error:
        if error.code == "voice_not_found":
            raise ApiError(
                "voice_not_found", error.detail, field="voice_name", status_code=404
            ) from None
        raise

    def store() -> str:
        with transaction.atomic():
            row = settings_row()
            stored = stored_voice_named(name)
            row.default_voice = stored
            row.default_builtin = "" if stored is not None else name
            row.save(update_fields=["default_voice", "default_builtin", "updated_at"])
        return stored.name if stored is not None else name

    chosen = await runtime.run_db(store)
    return {
        "message": "Default voice updated successfully",
        "default_voice": chosen,
        "voice_info": await voices.voice_detail(chosen),
    }


async def default_voice_clear() -> dict[str, Any]:
    """DELETE /v1/voices/default: back to the engine's own default voice."""

    def clear() -> None:
        row = settings_row()
        row.default_voice, row.default_builtin = None, ""
        row.save(update_fields=["default_voice", "default_builtin", "updated_at"])

    await runtime.run_db(clear)
    return {
        "message": "Default voice reset to system default",
        "default_voice": None,
        "source": "engine_default",
        **(await _engine_default()),
    }


async def voice_rename(*, name: str, new_name: Any) -> dict[str, Any]:
    """PUT /v1/voices/{name} with `new_name`: rename a stored voice (its aliases and the
    default-voice setting follow it). 404 / 409 / 400 invalid_name as PATCH."""
    if not isinstance(new_name, str) or not new_name.strip():
        raise ApiError("invalid_new_name", "new_name must be a non-empty string.", field="new_name")
    try:
        voice = await voices.voice_update(
            name=name, fields={"name": new_name.strip()}, sample=None, from_form=False
        )
    except ApiError as error:
        if error.field == "name" and error.status_code != 404:
            raise type(error)(error.code, error.detail, field="new_name") from None
        raise
    return {
        "message": "Voice renamed successfully",
        "old_name": name,
        "new_name": voice["name"],
        "voice": voice,
    }


__all__ = [
    "alias_add",
    "alias_remove",
    "aliases_of",
    "all_names",
    "clear_history",
    "config",
    "default_voice",
    "default_voice_clear",
    "default_voice_set",
    "endpoints",
    "history",
    "info",
    "languages",
    "mask_secrets",
    "memory",
    "memory_config",
    "memory_recommendations",
    "memory_reset",
    "ping",
    "recommendations_for",
    "statistics",
    "status",
    "voice_rename",
]
