"""Which speech jobs this process runs, their heartbeat, and the jobs of processes that died.

A job's row is written by the process that runs it (``speech.services``' recorder). If that
process is killed (SIGKILL, OOM, a deploy), nothing would ever write the row again and it would
stay ``queued``/``running`` forever. So, as for spectator sockets (``presence_touch``):

- every process keeps its live jobs in ``LIVE`` (a module-level registry);
- its sweeper calls ``speech_jobs_heartbeat`` with them (``streams.scheduler.presence_touch``),
  which refreshes ``updated_at`` of those that have not been written for a while, so a job
  stalled by a slow client or a slow upstream engine still shows signs of life;
- every sweeper (``streams.scheduler.sweep_once``, also in ``run_scheduler``) calls
  ``speech_jobs_abandon_stale``: an active job whose ``updated_at`` (or ``created_at``) is older
  than ``PARLEY_SPEECH_JOB_STALE_S`` is marked ``failed`` with error ``abandoned``.

The sweeper calls these on a database thread, never on the event loop.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from speech.models import ACTIVE_JOB_STATUSES, JobStatus, SpeechJob

if TYPE_CHECKING:
    from speech.services import LiveJob

logger = logging.getLogger(__name__)

__all__ = [
    "ABANDONED",
    "ALL_JOBS_GROUP",
    "LIVE",
    "job_group",
    "local_job_ids",
    "speech_jobs_abandon_stale",
    "speech_jobs_heartbeat",
]

# The error code of a job whose process stopped while running it.
ABANDONED = "abandoned"

# This process's jobs, by id: added when synthesis starts, removed once the recorder has
# written the final state (speech.services). Mutated on the event loop only.
LIVE: dict[uuid.UUID, LiveJob] = {}

# Channel-layer groups of progress updates: one job's, and every job's.
ALL_JOBS_GROUP = "speech_jobs"


def job_group(job_id: uuid.UUID) -> str:
    return f"speech_job.{job_id.hex}"


def local_job_ids() -> list[uuid.UUID]:
    """Ids of the jobs this process runs; safe from any thread."""
    # list(dict) runs in C without releasing the GIL: no "changed size during iteration".
    return list(LIVE)


def _stale_s() -> float:
    return float(settings.PARLEY_SPEECH_JOB_STALE_S)


def _not_written_since(moment: datetime) -> Q:
    return Q(updated_at__lt=moment) | Q(updated_at__isnull=True, created_at__lt=moment)


def speech_jobs_heartbeat(*, job_ids: Iterable[uuid.UUID], now: datetime | None = None) -> int:
    """Refresh ``updated_at`` of this process's active jobs; returns how many rows changed.

    Only rows not written for a third of the stale time are touched: a job making progress is
    written by its recorder several times a second and needs no extra write.
    """
    ids = list(job_ids)
    if not ids:
        return 0  # the common case: no query at all
    now = now or timezone.now()
    quiet_since = now - timedelta(seconds=_stale_s() / 3)
    return (
        SpeechJob.objects.filter(pk__in=ids, status__in=ACTIVE_JOB_STATUSES)
        .filter(_not_written_since(quiet_since))
        .update(updated_at=now)
    )


def speech_jobs_abandon_stale(
    *, now: datetime | None = None, keep: Iterable[uuid.UUID] | None = None
) -> list[uuid.UUID]:
    """Mark ``failed``/``abandoned`` the active jobs nobody has written for the stale time.

    ``keep`` (default: this process's live jobs) is never abandoned: this process knows they
    are alive even if its own heartbeat has not run yet. Returns the ids abandoned here.
    """
    now = now or timezone.now()
    stale_s = _stale_s()
    cutoff = now - timedelta(seconds=stale_s)
    kept = set(local_job_ids() if keep is None else keep)
    candidates = (
        SpeechJob.objects.filter(status__in=ACTIVE_JOB_STATUSES)
        .filter(_not_written_since(cutoff))
        .exclude(pk__in=kept)
        .values_list("id", "updated_at", "created_at")
    )
    abandoned: list[uuid.UUID] = []
    for job_id, updated_at, created_at in list(candidates):
        last_seen = updated_at or created_at
        detail = (
            "The process running this job stopped (no heartbeat since "
            f"{last_seen.isoformat()}, more than {stale_s:g} s before {now.isoformat()})."
        )
        # Conditional, like a release: a heartbeat or a final write that landed after the read
        # wins, and of several sweepers racing exactly one matches the row.
        matched = (
            SpeechJob.objects.filter(pk=job_id, status__in=ACTIVE_JOB_STATUSES)
            .filter(_not_written_since(cutoff))
            .update(
                status=JobStatus.FAILED,
                error=ABANDONED,
                error_detail=detail,
                finished_at=now,
                updated_at=now,
            )
        )
        if matched:
            abandoned.append(job_id)
            logger.warning("speech job %s abandoned: no heartbeat since %s", job_id, last_seen)
            _announce(job_id)
    return abandoned


def _announce(job_id: uuid.UUID) -> None:
    """Push the final progress, so WebSocket subscribers of the job get it and close."""
    from speech.selectors import progress_of
    from streams.runtime import runtime

    job = SpeechJob.objects.filter(pk=job_id).first()
    if job is None:
        return
    message = {"type": "speech.progress", "progress": progress_of(job)}
    for group in (job_group(job_id), ALL_JOBS_GROUP):
        try:
            runtime.publish(group, message)
        except Exception:  # a broadcast failing must not stop the sweep
            logger.exception("progress push to %s failed", group)
