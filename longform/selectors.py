"""Reads of long text jobs, in the shapes the API answers (Chatterbox's field names, so its
clients read them). Blocking ORM calls: call them off the loop."""

from __future__ import annotations

from collections import Counter
from typing import Any

from django.db.models import Avg, Count, Q, Sum
from django.db.models.functions import Substr

from longform.models import ACTIVE, FINISHED, LongJob, LongStatus
from streams.errors import ApiError

PREFIX = "/v1/audio/speech/long"


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment else None


def _preview(job: LongJob) -> str:
    preview = job.__dict__.get("preview")
    return preview if preview is not None else job.text[:100]


def _audio_seconds(job: LongJob) -> float:
    return round(job.audio_bytes / (job.pcm_rate * 2), 3) if job.pcm_rate else 0.0


def progress_of(job: LongJob) -> dict[str, Any]:
    """Progress: pieces ("chunks") and characters done, audio so far, and an estimate of the
    time left from the synthesis time per character so far."""
    total = job.total_pieces or 1
    percent = round(100 * job.done_pieces / total, 2) if job.total_pieces else 0.0
    if job.status == LongStatus.COMPLETED:
        percent = 100.0
    remaining = None
    if job.done_chars and job.status in ACTIVE:
        per_char = job.processing_s / job.done_chars
        remaining = max(0, round(per_char * (job.text_chars - job.done_chars)))
    current = job.done_pieces if job.status == LongStatus.PROCESSING else None
    return {
        "job_id": str(job.id),
        "status": job.status,
        "overall_progress": percent,
        "total_chunks": job.total_pieces,
        "completed_chunks": job.done_pieces,
        "current_chunk": current,
        "characters_done": job.done_chars,
        "text_length": job.text_chars,
        "audio_seconds": _audio_seconds(job),
        "estimated_remaining_seconds": remaining,
        "error": job.error or None,
    }


def job_dict(job: LongJob) -> dict[str, Any]:
    """GET /v1/audio/speech/long/{id}."""
    url = f"{PREFIX}/{job.id}"
    completed = job.status == LongStatus.COMPLETED
    return {
        "job_id": str(job.id),
        "status": job.status,
        "display_name": job.display_name or None,
        "text_preview": _preview(job),
        "progress": progress_of(job),
        "metadata": {
            "text_length": job.text_chars,
            "total_chunks": job.total_pieces,
            "completed_chunks": job.done_pieces,
            "chunk_size": job.piece_chars,
            "model": job.model or None,
            "voice": job.voice or None,
            "speed": job.speed,
            "parameters": job.params,
            "output_format": job.response_format,
            "sample_rate": job.pcm_rate or job.sample_rate,
            "output_size_bytes": job.output_bytes,
            "output_duration_seconds": _audio_seconds(job) if completed else None,
            "first_chunk_seconds": job.first_piece_s,
            "total_processing_time_ms": round(job.processing_s * 1000),
            "retry_count": job.retry_count,
            "tags": job.tags,
            "is_archived": job.is_archived,
            "error": job.error or None,
            "error_detail": job.error_detail or None,
            "processing_started_at": _iso(job.started_at),
            "processing_paused_at": _iso(job.paused_at),
            "processing_completed_at": _iso(job.finished_at),
        },
        "created_at": _iso(job.created_at),
        "updated_at": _iso(job.updated_at),
        "status_url": url,
        "sse_url": f"{url}/sse",
        "download_url": f"{url}/download" if completed else None,
        "can_pause": job.status in ACTIVE,
        "can_resume": job.status == LongStatus.PAUSED,
        "can_cancel": job.status in (*ACTIVE, LongStatus.PAUSED),
        "can_retry": job.status in (LongStatus.FAILED, LongStatus.CANCELLED),
    }


def job_by_id(job_id: Any) -> LongJob:
    job = LongJob.objects.filter(pk=job_id).first()
    if job is None:
        raise ApiError(
            "job_not_found", f"No long text job {job_id}.", field="job_id", status_code=404
        )
    return job


def _item(job: LongJob) -> dict[str, Any]:
    full = job_dict(job)
    return {
        key: full[key] for key in ("job_id", "status", "display_name", "text_preview", "created_at")
    } | {
        "text_length": job.text_chars,
        "progress_percentage": full["progress"]["overall_progress"],
        "completed_at": _iso(job.finished_at),
        "download_url": full["download_url"],
        "can_resume": full["can_resume"],
        "voice": job.voice or None,
        "total_duration_seconds": full["metadata"]["output_duration_seconds"],
        "audio_file_size": job.output_bytes,
        "retry_count": job.retry_count,
        "is_archived": job.is_archived,
        "tags": job.tags,
    }


def job_list(
    *,
    status: str | None,
    limit: int,
    offset: int,
    finished_only: bool = False,
    include_archived: bool = True,
) -> dict[str, Any]:
    """A page of jobs, newest first, with the counts Chatterbox's list carries."""
    rows = LongJob.objects.all()
    if finished_only:
        rows = rows.filter(status__in=FINISHED)
    if not include_archived:
        rows = rows.filter(is_archived=False)
    if status:
        rows = rows.filter(status=status)
    counts = rows.aggregate(
        total=Count("id"),
        active=Count("id", filter=Q(status__in=ACTIVE)),
        completed=Count("id", filter=Q(status=LongStatus.COMPLETED)),
    )
    # A text can be 100,000 characters: a page reads only its first 100.
    page = list(
        rows.annotate(preview=Substr("text", 1, 100))
        .defer("text")
        .order_by("-created_at", "id")[offset : offset + limit]
    )
    return {
        "jobs": [_item(job) for job in page],
        "total_jobs": counts["total"],
        "active_jobs": counts["active"],
        "completed_jobs": counts["completed"],
        "limit": limit,
        "offset": offset,
    }


def history_stats() -> dict[str, Any]:
    """GET /v1/audio/speech/long-history/stats (Chatterbox's LongTextHistoryStats)."""
    rows = LongJob.objects.all()
    agg = rows.aggregate(
        total=Count("id"),
        completed=Count("id", filter=Q(status=LongStatus.COMPLETED)),
        failed=Count("id", filter=Q(status=LongStatus.FAILED)),
        cancelled=Count("id", filter=Q(status=LongStatus.CANCELLED)),
        active=Count("id", filter=Q(status__in=ACTIVE)),
        paused=Count("id", filter=Q(status=LongStatus.PAUSED)),
        storage=Sum("output_bytes"),
        chars=Sum("text_chars", filter=Q(status=LongStatus.COMPLETED)),
        processing=Avg("processing_s", filter=Q(status=LongStatus.COMPLETED)),
    )
    seconds = 0.0
    by_month: Counter[str] = Counter()
    voices: Counter[str] = Counter()
    for audio_bytes, rate, status, created, voice in rows.values_list(
        "audio_bytes", "pcm_rate", "status", "created_at", "voice"
    ):
        if status == LongStatus.COMPLETED and rate:
            seconds += audio_bytes / (rate * 2)
        by_month[created.strftime("%Y-%m")] += 1
        voices[voice or "(default)"] += 1
    ended = agg["completed"] + agg["failed"]
    return {
        "total_jobs": agg["total"],
        "completed_jobs": agg["completed"],
        "failed_jobs": agg["failed"],
        "cancelled_jobs": agg["cancelled"],
        "active_jobs": agg["active"],
        "paused_jobs": agg["paused"],
        "total_audio_duration_seconds": round(seconds, 3),
        "total_characters": agg["chars"] or 0,
        "total_storage_bytes": agg["storage"] or 0,
        "average_processing_time_seconds": round(agg["processing"] or 0.0, 3),
        "success_rate_percentage": round(100 * agg["completed"] / ended, 2) if ended else 0.0,
        "most_used_voice": voices.most_common(1)[0][0] if voices else None,
        "jobs_by_month": dict(sorted(by_month.items())),
    }
