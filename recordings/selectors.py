"""Reads: recordings as the API and the socket events show them. No writes here."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet

from recordings.models import Recording, RecordingStatus
from streams.events import iso

FILE_PATH = "/static/audio/{sid}.wav"


def recording_file_path(sid: str) -> str:
    return FILE_PATH.format(sid=sid)


def recording_file_url(recording: Recording, base_url: str | None = None) -> str | None:
    """Where the WAV is served: the seed's http://<host>/static/audio/<sid>.wav."""
    if recording.status != RecordingStatus.COMPLETE:
        return None
    return f"{base_url or recording.base_url}{recording_file_path(recording.sid)}"


def result_file_path_payload(recording: Recording) -> dict[str, Any]:
    """The seed's `result_file_path` event, word for word."""
    return {
        "streaming_id": recording.sid,
        "message": "Disconnected from server",
        "file_url": recording_file_url(recording),
    }


def recordings_query(
    *, status: str | None = None, room: str | None = None, speaker: str | None = None
) -> QuerySet[Recording]:
    queryset = Recording.objects.select_related("stream", "stream__room")
    if status:
        queryset = queryset.filter(status=status)
    if room:
        queryset = queryset.filter(stream__room__name=room, broadcast=True)
    if speaker:
        queryset = queryset.filter(stream__speaker=speaker)
    return queryset.order_by("-created_at", "-id")


def recording_as_dict(recording: Recording, *, base_url: str | None = None) -> dict[str, Any]:
    stream = recording.stream
    pcm = recording.container == "pcm"
    saved = recording.status == RecordingStatus.COMPLETE
    received_ms = round(stream.pcm_format.duration_s(stream.total_bytes) * 1000) if pcm else None
    return {
        "streaming_id": recording.sid,
        "status": recording.status,
        "transport": recording.transport,
        "speaker": stream.speaker,
        "room": stream.room.name if recording.broadcast else None,
        "format": {
            "container": recording.container,
            # What the chunks are (PCM) or what the decoded file is (containers, once saved).
            "sample_rate_hz": stream.sample_rate_hz if pcm else recording.wav_sample_rate_hz,
            "channels": stream.channels if pcm else recording.wav_channels,
            "bytes_per_sample": stream.bytes_per_sample if pcm else recording.wav_bytes_per_sample,
        },
        "chunks": stream.chunk_count,
        "bytes": stream.total_bytes,
        "duration_ms": recording.duration_ms if saved else received_ms,
        "file_bytes": recording.file_bytes if saved else None,
        "file_url": recording_file_url(recording, base_url),
        "error": recording.error or None,
        "created_at": iso(recording.created_at),
        "stopped_at": iso(recording.stopped_at),
        "completed_at": iso(recording.completed_at),
    }


def api_keys_valid(*, key_hashes: set[str]) -> set[str]:
    """The hashes among `key_hashes` of keys that exist and are not revoked (no cache)."""
    from streams.models import ApiKey

    return set(
        ApiKey.objects.filter(key_hash__in=key_hashes, revoked_at__isnull=True).values_list(
            "key_hash", flat=True
        )
    )
