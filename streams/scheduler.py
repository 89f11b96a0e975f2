"""The sweeper: finds clock-driven work that is due (or soon due) in the database.

Every web process runs it, and so does `manage.py run_scheduler`; the services it calls are
idempotent conditional updates, so any number of sweepers and timers can race safely.

On PostgreSQL a release is also announced (`NOTIFY parley_release`, delivered when the final
chunk's transaction commits) to every sweeping process, which arms a backup timer at once:
a crashed owner's release then waits only `PARLEY_RELEASE_BACKUP_S`, however soon after its
final chunk it falls due — a sweep would only see it if one ran in between.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import close_old_connections, connection
from django.utils import timezone

from streams import services
from streams.models import SpectatorPresence, Stream, StreamStatus, Turn, TurnStatus

logger = logging.getLogger(__name__)

Due = tuple[str, str, datetime]

# Other apps' periodic work, registered from their AppConfig.ready() so the core does not
# import them: sweep hooks get `now` on every sweep; heartbeat hooks say "this process lives".
SWEEP_HOOKS: list[Callable[[datetime], object]] = []
HEARTBEAT_HOOKS: list[Callable[[], object]] = []


def sweep_once(*, horizon_s: float = 0.0) -> list[Due]:
    """Do overdue work now; return work due within `horizon_s` so the caller can arm timers."""
    now = timezone.now()
    try:
        for turn_id in Turn.objects.filter(
            status=TurnStatus.FINALIZED, release_at__lte=now
        ).values_list("id", flat=True):
            services.turn_release(turn_id=turn_id, skip_locked=True)
        for turn_id in Turn.objects.filter(
            status=TurnStatus.CLAIMED, lease_expires_at__lte=now
        ).values_list("id", flat=True):
            services.turn_expire(turn_id=turn_id)
        for stream_id in Stream.objects.filter(
            status=StreamStatus.AWAITING_GAPS, gap_deadline__lte=now
        ).values_list("stream_id", flat=True):
            services.stream_finalize_after_gap(stream_id=stream_id)
        stale = now - timedelta(seconds=settings.PARLEY_SPECTATOR_STALE_S)
        SpectatorPresence.objects.filter(seen_at__lt=stale).delete()
        for hook in SWEEP_HOOKS:
            hook(now)
        if horizon_s <= 0:
            return []
        soon = now + timedelta(seconds=horizon_s)
        upcoming: list[Due] = [
            ("release", str(turn_id), when)
            for turn_id, when in Turn.objects.filter(
                status=TurnStatus.FINALIZED, release_at__gt=now, release_at__lte=soon
            ).values_list("id", "release_at")
        ]
        upcoming += [
            ("expire", str(turn_id), when)
            for turn_id, when in Turn.objects.filter(
                status=TurnStatus.CLAIMED, lease_expires_at__gt=now, lease_expires_at__lte=soon
            ).values_list("id", "lease_expires_at")
        ]
        upcoming += [
            ("gap", stream_id, when)
            for stream_id, when in Stream.objects.filter(
                status=StreamStatus.AWAITING_GAPS, gap_deadline__gt=now, gap_deadline__lte=soon
            ).values_list("stream_id", "gap_deadline")
        ]
        return upcoming
    finally:
        close_old_connections()


RELEASE_CHANNEL = "parley_release"


def release_announce(*, turn_id: object, release_at: datetime) -> None:
    """Tell every standby process of a release to come (PostgreSQL; nothing elsewhere).

    Call inside the transaction that finalized the turn: PostgreSQL delivers the
    notification when it commits, and never if it rolls back. Payload: `<turn_id> <iso>`.
    """
    if connection.vendor != "postgresql":
        return  # SQLite serves one process, whose own timer is the release
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_notify(%s, %s)", [RELEASE_CHANNEL, f"{turn_id} {release_at.isoformat()}"]
        )


def parse_announcement(payload: str) -> Due | None:
    """`<turn_id> <iso>` from `release_announce` as a Due, or None if it is not one."""
    turn_id, _, moment = payload.partition(" ")
    try:
        when = datetime.fromisoformat(moment)
    except ValueError:
        return None
    if not turn_id or when.tzinfo is None:
        return None
    return ("release", turn_id, when)


def listen_params() -> dict[str, object]:
    """psycopg.connect() keywords for a session of its own on Django's database, to LISTEN
    on (a pooled connection cannot hold a LISTEN)."""
    params = connection.get_connection_params()
    for key in ("cursor_factory", "context", "prepare_threshold"):
        params.pop(key, None)
    params.setdefault("connect_timeout", 5)
    return {**params, "autocommit": True}


def pending_releases() -> list[Due]:
    """Every finalized turn's release: what a standby that just (re)connected stands by for."""
    return [
        ("release", str(turn_id), when)
        for turn_id, when in Turn.objects.filter(
            status=TurnStatus.FINALIZED, release_at__isnull=False
        ).values_list("id", "release_at")
    ]


def presence_touch(channel_names: list[str]) -> None:
    """Heartbeat for this process's spectator sockets (and HEARTBEAT_HOOKS' work), so
    crashed workers' ones age out."""
    if channel_names:
        SpectatorPresence.objects.filter(channel_name__in=channel_names).update(
            seen_at=timezone.now()
        )
    for hook in HEARTBEAT_HOOKS:
        hook()


JOBS = {
    "release": lambda key: services.turn_release(turn_id=key),
    "expire": lambda key: services.turn_expire(turn_id=key),
    "gap": lambda key: services.stream_finalize_after_gap(stream_id=key),
}
