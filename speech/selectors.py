"""Reads: job progress in the seed's shape, jobs as JSON."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from speech.models import ACTIVE_JOB_STATUSES, JobStatus, SpeechJob

# Job status -> the seed's progress "status"
PROGRESS_STATUS = {
    JobStatus.QUEUED: "initializing",
    JobStatus.RUNNING: "generating_audio",
    JobStatus.COMPLETED: "completed",
    JobStatus.CANCELLED: "cancelled",
    JobStatus.FAILED: "error",
}
PREVIEW_CHARS = 50

IDLE_PROGRESS: dict[str, Any] = {
    "is_processing": False,
    "status": "idle",
    "current_step": "No active speech synthesis",
    "current_chunk": 0,
    "total_chunks": 0,
    "progress_percentage": 0.0,
    "duration_seconds": 0.0,
    "estimated_completion": None,
    "text_preview": "",
    "job_id": None,
}


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[:PREVIEW_CHARS].rstrip() + "..."


def _epoch(moment: datetime | None) -> float | None:
    return round(moment.timestamp(), 3) if moment else None


def progress_shape(
    *,
    job_id: uuid.UUID,
    status: str,
    text: str,
    current: int,
    total: int,
    started_at: datetime | None,
    finished_at: datetime | None,
    now: datetime,
    error: str = "",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The seed's progress object for one job, plus job_id, job_status and error."""
    active = status in ACTIVE_JOB_STATUSES
    done = status == JobStatus.COMPLETED
    fraction = 1.0 if done else (current / total if total else 0.0)
    end = finished_at or now
    duration = (end - started_at).total_seconds() if started_at else 0.0
    estimated = None
    if done:
        estimated = _epoch(finished_at)
    elif active and started_at and fraction > 0:
        estimated = round(started_at.timestamp() + duration / fraction, 3)
    if active:
        step = f"Streaming audio for chunk {current}/{total}" if current else "Preparing synthesis"
    else:
        step = {
            JobStatus.COMPLETED: f"Completed {total}/{total} chunks",
            JobStatus.CANCELLED: f"Cancelled at chunk {current}/{total}",
            JobStatus.FAILED: f"Failed at chunk {current}/{total}: {error}",
        }.get(status, status)
    return {
        "is_processing": active,
        "status": PROGRESS_STATUS.get(status, status),
        "current_step": step,
        "current_chunk": current,
        "total_chunks": total,
        "progress_percentage": round(fraction * 100, 1),
        "duration_seconds": round(duration, 3),
        "estimated_completion": estimated,
        "text_preview": _preview(text),
        "job_id": str(job_id),
        "job_status": status,
        "error": error or None,
        **(extra or {}),
    }


def _job_extra(job: Any) -> dict[str, Any]:
    return {
        "kind": job.kind,
        "engine": job.engine,
        "audio_bytes": job.audio_bytes,
        "audio_seconds": round(job.audio_seconds, 3),
        "first_audio_ms": job.first_audio_ms,
        "ttfb_ms": job.ttfb_ms,
    }


def progress_of(job: Any) -> dict[str, Any]:
    """Progress of a LiveJob (this process, freshest) or a SpeechJob row: same attributes."""
    from django.utils import timezone

    return progress_shape(
        job_id=job.id,
        status=job.status,
        text=job.text,
        current=job.current_chunk,
        total=job.total_chunks,
        started_at=job.started_at,
        finished_at=job.finished_at,
        now=timezone.now(),
        error=job.error,
        extra=_job_extra(job),
    )


def latest_active_job() -> SpeechJob | None:
    """The most recently created job still queued or running, in any process."""
    return SpeechJob.objects.filter(status__in=ACTIVE_JOB_STATUSES).order_by("-created_at").first()


def job_by_id(job_id: uuid.UUID) -> SpeechJob | None:
    return SpeechJob.objects.filter(pk=job_id).first()


def job_as_dict(job: SpeechJob) -> dict[str, Any]:
    return {
        "id": str(job.id),
        "kind": job.kind,
        "endpoint": job.endpoint,
        "status": job.status,
        "text_chars": job.text_chars,
        "model": job.model,
        "engine": job.engine,
        "voice": job.voice,
        "engine_voice": job.engine_voice,
        "response_format": job.response_format,
        "stream_format": job.stream_format,
        "sample_rate": job.sample_rate,
        "speed": job.speed,
        "speed_applied": job.speed_applied,
        "params": job.params,
        "current_chunk": job.current_chunk,
        "total_chunks": job.total_chunks,
        "audio_bytes": job.audio_bytes,
        "bytes_sent": job.bytes_sent,
        "audio_seconds": job.audio_seconds,
        "first_audio_ms": job.first_audio_ms,
        "ttfb_ms": job.ttfb_ms,
        "elapsed_seconds": job.elapsed_seconds,
        "real_time_factor": job.real_time_factor,
        "usage": job.usage,
        "error": job.error or None,
        "error_detail": job.error_detail or None,
        "created_at": job.created_at.isoformat() if job.created_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }
