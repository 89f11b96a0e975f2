"""Long text jobs: every write (the API's actions and the runner's progress), as conditional
updates, so any number of workers can race on a job and exactly one wins each transition.

Claiming: a worker takes a job with one conditional UPDATE (``pending``, or ``processing``
whose lease ran out) and renews its lease while it runs; every write of the runner is
conditional on ``worker = <its id> AND status = 'processing'``, so a job paused, cancelled or
taken over meanwhile is never written by the old runner. All functions here are blocking ORM
calls: call them off the loop (``runtime.run_db``).
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone

from longform.models import ACTIVE, LongJob, LongPiece, LongStatus
from speech.params import KNOB_FIELDS, SPEECH_FIELDS, FieldSpec, is_text, parse_fields
from speech.tts import TextSpan, split_spans
from streams.errors import ApiError

# The seed's knobs a long job takes (the streaming_* ones shape a live stream, not a file).
_KNOBS = tuple(spec for spec in KNOB_FIELDS if not spec.name.startswith("streaming_"))
_BASE = {spec.name: spec for spec in SPEECH_FIELDS}


def long_fields() -> tuple[FieldSpec, ...]:
    """The request body's fields (``input`` up to PARLEY_TTS_LONG_MAX_CHARS)."""
    return (
        _BASE["model"],
        FieldSpec(
            "input",
            "str",
            required=True,
            max_length=settings.PARLEY_TTS_LONG_MAX_CHARS,
            description="Text to convert to speech (up to PARLEY_TTS_LONG_MAX_CHARS)",
            length_is_limit=True,
        ),
        _BASE["voice"],
        FieldSpec(
            "response_format",
            "enum",
            "mp3",
            choices=_BASE["response_format"].choices,
            description="Format of the finished file",
        ),
        _BASE["speed"],
        _BASE["sample_rate"],
        FieldSpec(
            "chunk_size",
            "int",
            low=50,
            high=5000,
            description="Characters of each stored piece (whole sentences up to it); "
            "default PARLEY_TTS_LONG_PIECE_CHARS",
        ),
        DISPLAY_NAME,
        *_KNOBS,
    )


@dataclass(frozen=True)
class LongRequest:
    text: str
    model: str | None
    voice: str | None
    response_format: str
    speed: float
    sample_rate: int | None
    piece_chars: int
    display_name: str
    knobs: dict[str, Any]


def long_request(data: Mapping[str, Any]) -> LongRequest:
    """Validate a POST body; raises ApiError (``invalid_*``/``missing_*``/``unknown_field``,
    ``input_too_long``) with the field."""
    parsed = parse_fields(data, long_fields())
    values, given = parsed.values, parsed.given
    return LongRequest(
        text=values["input"],
        model=values["model"],
        voice=values["voice"],
        response_format=values["response_format"],
        speed=values["speed"],
        sample_rate=values["sample_rate"],
        piece_chars=values["chunk_size"] or settings.PARLEY_TTS_LONG_PIECE_CHARS,
        display_name=values["display_name"] or "",
        knobs={spec.name: values[spec.name] for spec in _KNOBS if spec.name in given},
    )


def plan_pieces(text: str, piece_chars: int) -> list[TextSpan]:
    """The job's pieces: whole sentences up to ``piece_chars`` each (a longer sentence is
    cut at clauses, then words). Deterministic: a resumed job finds the same pieces."""
    return [span for span in split_spans(text, "sentence", piece_chars) if span.text.strip()]


def job_create(*, request: LongRequest) -> LongJob:
    pieces = plan_pieces(request.text, request.piece_chars)
    return LongJob.objects.create(
        text=request.text,
        text_chars=len(request.text),
        model=request.model or "",
        voice=request.voice or "",
        response_format=request.response_format,
        speed=request.speed,
        sample_rate=request.sample_rate,
        params=request.knobs,
        piece_chars=request.piece_chars,
        total_pieces=len(pieces),
        display_name=request.display_name,
    )


# --- media files ---------------------------------------------------------------------------


def job_dir_name(job_id: Any) -> str:
    return f"longform/{job_id}"


def media_path(name: str) -> Path:
    return Path(settings.MEDIA_ROOT) / name


def piece_file_name(job_id: Any, index: int) -> str:
    return f"{job_dir_name(job_id)}/{index:06d}.pcm"


# --- the runner's writes -------------------------------------------------------------------


def _lease(lease_s: float) -> Any:
    return timezone.now() + timedelta(seconds=lease_s)


def _claimable(now: Any) -> Q:
    return Q(status=LongStatus.PENDING) | Q(status=LongStatus.PROCESSING, lease_until__lt=now)


def claimable_ids(*, limit: int = 10) -> list[Any]:
    """Jobs nobody runs (new, resumed, or whose worker's lease ran out), oldest first."""
    now = timezone.now()
    return list(
        LongJob.objects.filter(_claimable(now))
        .order_by("created_at")
        .values_list("id", flat=True)[:limit]
    )


def job_claim(*, worker: str, lease_s: float) -> Any | None:
    """Take the oldest claimable job for ``worker``; its id, or None. One conditional UPDATE
    per candidate: of several workers racing for a job, exactly one matches the row."""
    for job_id in claimable_ids():
        now = timezone.now()
        matched = LongJob.objects.filter(_claimable(now), pk=job_id).update(
            status=LongStatus.PROCESSING,
            worker=worker,
            lease_until=now + timedelta(seconds=lease_s),
            started_at=now,
            updated_at=now,
        )
        if matched:
            return job_id
    return None


def _mine(job_id: Any, worker: str) -> Any:
    return LongJob.objects.filter(pk=job_id, worker=worker, status=LongStatus.PROCESSING)


def job_renew(*, job_id: Any, worker: str, lease_s: float) -> bool:
    """Extend the lease; False when the job is no longer this worker's to run."""
    return bool(_mine(job_id, worker).update(lease_until=_lease(lease_s)))


def job_for_run(*, job_id: Any) -> dict[str, Any]:
    """What the runner needs: the job's fields and the indexes of its finished pieces."""
    job = LongJob.objects.get(pk=job_id)
    done = set(LongPiece.objects.filter(job_id=job_id).values_list("index", flat=True))
    return {"job": job, "done": done}


def piece_commit(
    *,
    job_id: Any,
    worker: str,
    span: TextSpan,
    index: int,
    audio_bytes: int,
    synth_s: float,
    pcm_rate: int,
    lease_s: float,
) -> bool:
    """Record a finished piece (its file is already written); False (nothing recorded) when
    the job is no longer this worker's to run."""
    with transaction.atomic():
        job = _mine(job_id, worker).select_for_update().first()
        if job is None:
            return False
        _, created = LongPiece.objects.get_or_create(
            job_id=job_id,
            index=index,
            defaults={
                "start": span.start,
                "end": span.end,
                "file_name": piece_file_name(job_id, index),
                "audio_bytes": audio_bytes,
                "synth_s": synth_s,
                "worker": worker,
            },
        )
        if not created:
            return True
        now = timezone.now()
        first = (
            {}
            if job.first_piece_s is not None
            else {"first_piece_s": (now - job.created_at).total_seconds()}
        )
        _mine(job_id, worker).update(
            done_pieces=F("done_pieces") + 1,
            done_chars=F("done_chars") + (span.end - span.start),
            audio_bytes=F("audio_bytes") + audio_bytes,
            processing_s=F("processing_s") + synth_s,
            pcm_rate=pcm_rate,
            lease_until=now + timedelta(seconds=lease_s),
            updated_at=now,
            **first,
        )
    return True


def job_complete(*, job_id: Any, worker: str, output_name: str, output_bytes: int) -> bool:
    now = timezone.now()
    return bool(
        _mine(job_id, worker).update(
            status=LongStatus.COMPLETED,
            output_name=output_name,
            output_bytes=output_bytes,
            finished_at=now,
            lease_until=None,
            updated_at=now,
        )
    )


def job_fail(*, job_id: Any, worker: str, error: str, detail: str) -> bool:
    now = timezone.now()
    return bool(
        _mine(job_id, worker).update(
            status=LongStatus.FAILED,
            error=error[:64],
            error_detail=detail,
            finished_at=now,
            lease_until=None,
            updated_at=now,
        )
    )


# --- the API's actions ---------------------------------------------------------------------


def _get(job_id: Any) -> LongJob:
    job = LongJob.objects.filter(pk=job_id).first()
    if job is None:
        raise ApiError(
            "job_not_found", f"No long text job {job_id}.", field="job_id", status_code=404
        )
    return job


def _transition(job_id: Any, allowed: tuple[str, ...], action: str, **changes: Any) -> LongJob:
    """Move the job from one of ``allowed`` with ``changes`` (conditional: a concurrent
    change wins, and this answers 409 with the status it found)."""
    job = _get(job_id)
    now = timezone.now()
    matched = LongJob.objects.filter(pk=job_id, status__in=allowed).update(
        **changes, updated_at=now
    )
    if not matched:
        job.refresh_from_db()
        raise ApiError(
            "invalid_job_state",
            f"Cannot {action} a job that is {job.status} (only when {' or '.join(allowed)}).",
            field="status",
            status_code=409,
        )
    job.refresh_from_db()
    return job


def job_pause(*, job_id: Any) -> LongJob:
    """pending/processing -> paused; the runner stops within its current piece."""
    return _transition(
        job_id, ACTIVE, "pause", status=LongStatus.PAUSED, paused_at=timezone.now(), worker=""
    )


def job_resume(*, job_id: Any) -> LongJob:
    """paused -> pending: any worker continues after the last finished piece."""
    return _transition(job_id, (LongStatus.PAUSED,), "resume", status=LongStatus.PENDING)


def job_cancel(*, job_id: Any) -> LongJob:
    """pending/processing/paused -> cancelled (finished pieces are kept for a retry)."""
    return _transition(
        job_id,
        (*ACTIVE, LongStatus.PAUSED),
        "cancel",
        status=LongStatus.CANCELLED,
        worker="",
        finished_at=timezone.now(),
        error="cancelled",
        error_detail="cancelled by a client",
    )


def job_retry(*, job_id: Any, preserve_chunks: bool = True) -> LongJob:
    """failed/cancelled -> pending, from the last finished piece (or from the start)."""
    with transaction.atomic():
        job = _transition(
            job_id,
            (LongStatus.FAILED, LongStatus.CANCELLED),
            "retry",
            status=LongStatus.PENDING,
            worker="",
            error="",
            error_detail="",
            finished_at=None,
            retry_count=F("retry_count") + 1,
        )
        if not preserve_chunks:
            LongPiece.objects.filter(job_id=job_id).delete()
            LongJob.objects.filter(pk=job_id).update(
                done_pieces=0, done_chars=0, audio_bytes=0, pcm_rate=None, first_piece_s=None
            )
            job.refresh_from_db()
    return job


def job_delete(*, job_id: Any) -> None:
    """The job, its pieces and its files (a runner still on it finds it gone and stops)."""
    _get(job_id)
    LongJob.objects.filter(pk=job_id).delete()
    shutil.rmtree(media_path(job_dir_name(job_id)), ignore_errors=True)


DISPLAY_NAME = FieldSpec("display_name", "str", max_length=200, description="A name for the job")
UPDATE_FIELDS = ("display_name", "is_archived", "tags")


def job_update(*, job_id: Any, data: Mapping[str, Any]) -> LongJob:
    """PATCH: display_name, is_archived, tags (Chatterbox's LongTextJobUpdateRequest)."""
    if not isinstance(data, Mapping):
        raise ApiError("invalid_body", "Send a JSON object.", field=None)
    known = set(UPDATE_FIELDS)
    for name in data:
        if name not in known:
            raise ApiError(
                "unknown_field",
                f"Unknown field {name!r}; known fields: {', '.join(sorted(known))}.",
                field=name,
            )
    changes: dict[str, Any] = {}
    if data.get("display_name") is not None:
        changes.update(parse_fields({"display_name": data["display_name"]}, (DISPLAY_NAME,)).values)
    if data.get("is_archived") is not None:
        if not isinstance(data["is_archived"], bool):
            raise ApiError(
                "invalid_is_archived", "is_archived must be true or false.", field="is_archived"
            )
        changes["is_archived"] = data["is_archived"]
    if data.get("tags") is not None:
        tags = data["tags"]
        if (
            not isinstance(tags, list)
            or len(tags) > 20
            or not all(isinstance(t, str) and 0 < len(t.strip()) <= 50 for t in tags)
            or not all(is_text(t) and "\x00" not in t for t in tags)
        ):
            raise ApiError(
                "invalid_tags",
                "tags must be a list of up to 20 non-empty strings of up to 50 characters.",
                field="tags",
            )
        changes["tags"] = [t.strip() for t in tags]
    job = _get(job_id)
    if changes:
        LongJob.objects.filter(pk=job_id).update(**changes, updated_at=timezone.now())
        job.refresh_from_db()
    return job
