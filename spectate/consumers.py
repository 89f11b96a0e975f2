"""GET /spectate/ws?room=<room>[&after=<id>]: a read-only, gap-free, in-order event feed.

Live events take the fast path when they can: the hub calls `deliver` for every local
socket of the room, and a socket that is idle and exactly caught up (its next id is the
event's) writes the event's frame, built once for the process (spectate/hub.py), straight to
its connection through config/server.py's "parley.frames" extension, in the hub's own loop
iteration. Anything else (a gap, a duplicate, a socket busy joining or catching up, a server
without the extension) goes through the socket's inbox and its consumer task as before; the
id check (`last_sent`) keeps the two paths in order, once each.

Bounds: a socket whose unsent bytes pass PARLEY_SPECTATOR_BUFFER_BYTES is closed with 4429
`too_slow` and the id to resume after; one whose inbox passes PARLEY_SPECTATOR_QUEUE messages
(its task is reading the log) drops them and reads them from the log instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any
from urllib.parse import parse_qs

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.utils import await_many_dispatch
from django.conf import settings
from django.utils import timezone

from spectate.hub import event_frames, hub, text_frame
from spectate.services import backlog_page, events_between, spectator_join, spectator_leave
from streams.errors import ApiError
from streams.events import iso
from streams.params import MAX_EVENT_ID, parse_int
from streams.runtime import runtime
from streams.services import validate_room_name

logger = logging.getLogger(__name__)

CLOSE_BAD_REQUEST = 4400
# The client read too slowly: reconnect with after=<the last id it has>.
CLOSE_TOO_SLOW = 4429


def parse_query(query_string: bytes) -> tuple[str, int | None]:
    """(room, after) of the handshake's query string; ApiError `invalid_room` /
    `invalid_after` (an event id: 0 to 2**63 - 1) otherwise."""
    # Blank values kept: `room=` is refused like an empty value anywhere in the API; only a
    # missing room means "default" (docs/api.md).
    params = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    room = validate_room_name(params.get("room", ["default"])[0])
    after = None
    if "after" in params:
        after = parse_int(
            params["after"][0], field="after", minimum=0, maximum=MAX_EVENT_ID, text=True
        )
    return room, after


# Leaves still writing after their consumer ended, kept referenced until done.
_leaving: set[asyncio.Task] = set()


class SpectatorConsumer(AsyncJsonWebsocketConsumer):
    """Events reach the socket through the process's RoomHub (spectate/hub.py), not through
    a channel of its own: no channel layer call stands between a client and its handshake,
    and the hub's watchdog catches the socket up from the log when Redis loses events."""

    room: str
    last_sent: int

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' consumer loop over the client and the hub's deliveries, and a leave
        that runs however the socket ends: a clean close, a reset, a send to a socket that
        closed meanwhile, or daphne cancelling a consumer slow to finish."""
        self.scope = scope
        self.channel_layer = None
        # The presence row's key; unique across workers.
        self.channel_name = f"spectator.{uuid.uuid4().hex}"
        self.base_send = send
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._received = 0
        self._ended = False
        self._busy = False  # a handler runs: live events wait in the inbox
        self._dropped = False
        self._resume_from = 0
        # config/server.py's writer of pre-built frames; None under another server.
        self._write = scope.get("extensions", {}).get("parley.frames", {}).get("write")
        self._buffer_cap = settings.PARLEY_SPECTATOR_BUFFER_BYTES
        self._queue_cap = settings.PARLEY_SPECTATOR_QUEUE
        try:
            await await_many_dispatch([receive, self._inbox.get], self.dispatch)
        except StopConsumer:
            pass
        finally:
            self._ended = True
            await self._leave()

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, minus its per-message `close_old_connections` thread hop.

        Every database call here goes through `runtime.run_db`, which closes its own
        connections; the hop cost a round trip to asgiref's shared thread for every event
        to every spectator (see docs/benchmarks.md).
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        self._busy = True
        try:
            await handler(message)
        finally:
            self._busy = False

    async def send(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().send(*args, **kwargs)
        except Exception as exc:
            # daphne raises "send on a closed protocol" for a client that closed while
            # events were being written to it: the socket is gone, so is this consumer.
            # Whatever else failed, the socket is closed too (a no-op if it is gone): open
            # and fed nothing more, a client could not tell it had stopped being served.
            with contextlib.suppress(Exception):
                await self.base_send({"type": "websocket.close", "code": 1011})
            raise StopConsumer from exc

    async def send_event(self, text: str) -> None:
        """Send one event's JSON text; through the frame writer (and its bound) if there is
        one. StopConsumer once the socket is closed or dropped."""
        if self._dropped:
            raise StopConsumer
        if self._write is None:
            await self.send(text_data=text)
            return
        waiting = self._write(text_frame(text.encode()))
        self._wrote(waiting)
        if waiting < 0:
            raise StopConsumer  # closed meanwhile
        if self._dropped:
            await self._close_too_slow()

    def _wrote(self, waiting: int) -> None:
        """Account for one frame written: `waiting` bytes are unsent (-1: socket closed)."""
        if waiting < 0:
            # Closed meanwhile: its disconnect is on its way; nothing more is written.
            self._dropped = True
            hub.leave(self.room, self)
        elif waiting > self._buffer_cap:
            self._drop()

    def _drop(self) -> None:
        """The client reads too slowly: stop writing to it now, and close it (from the
        consumer's task) with the id to resume after."""
        if self._dropped:
            return
        self._dropped = True
        hub.leave(self.room, self)
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait({"type": "spectator.drop"})

    async def spectator_drop(self, message: dict[str, Any]) -> None:
        await self._close_too_slow()

    async def _close_too_slow(self) -> None:
        # Dropped in its join's backlog (older audio after the state): resuming after the
        # state's id gives every event since, as the id contract says.
        after = getattr(self, "last_sent", self._resume_from)
        logger.info("spectator of %s too slow: closed at id %s", self.room, after)
        with contextlib.suppress(Exception):
            await self.base_send(
                {
                    "type": "websocket.close",
                    "code": CLOSE_TOO_SLOW,
                    "reason": f"too_slow: resume with after={after}",
                }
            )
        raise StopConsumer

    async def connect(self) -> None:
        try:
            self.room, after = parse_query(self.scope.get("query_string", b""))
        except ApiError as exc:
            await self.accept()
            await self.send_json(self._error(exc.as_dict(), room=None, event_id=0))
            await self.close(code=CLOSE_BAD_REQUEST, reason=exc.code)
            return
        await self.accept()
        # Listen before reading the snapshot: anything committed after it arrives live and
        # is de-duplicated by id, so the seam between the two loses nothing.
        await hub.join(self.room, self)
        runtime.local_spectators.add(self.channel_name)
        joined = await runtime.run_db(
            spectator_join, room_name=self.room, channel_name=self.channel_name, after=after
        )
        self._resume_from = joined["resume_from"]
        for message in joined["messages"]:
            await self.send_event(json.dumps(message))
        if backlog := joined.get("backlog"):
            await self._send_backlog(**backlog)
        self.last_sent = joined["resume_from"]
        if joined.get("catch_up"):
            await self._catch_up(up_to=None)

    async def _leave(self) -> None:
        if not hasattr(self, "room"):
            return
        hub.leave(self.room, self)
        if self.channel_name not in runtime.local_spectators:
            return
        runtime.local_spectators.discard(self.channel_name)
        # Its own task: it completes even if this consumer is being cancelled. If it cannot
        # (the database is down), the row, no longer refreshed, ages out.
        task = asyncio.ensure_future(
            runtime.run_db(spectator_leave, channel_name=self.channel_name)
        )
        _leaving.add(task)
        task.add_done_callback(_left)
        with contextlib.suppress(Exception):
            await asyncio.shield(task)

    # --- the hub's side (spectate.hub.Listener) ---------------------------------------------

    def deliver(self, message: dict[str, Any]) -> None:
        if self._dropped:
            return
        if message["type"] == "room.events" and message["events"]:
            events = message["events"]
            self._received = max(self._received, events[-1]["id"])
            if (
                self._write is not None
                and not self._busy
                and self._inbox.empty()
                and hasattr(self, "last_sent")
            ):
                rest = self._write_live(events, event_frames(message))
                if rest is None:
                    return
                message = {"type": "room.events", "room": message["room"], "events": rest}
        if self._inbox.qsize() >= self._queue_cap:
            # Its task is reading the log and this socket is that far behind live: what waits
            # here is in the log too; read it from there once the task is free.
            while not self._inbox.empty():
                self._inbox.get_nowait()
            message = {"type": "room.resync", "room": self.room, "up_to": self._received}
        self._inbox.put_nowait(message)

    def _write_live(self, events: list[dict[str, Any]], frames: list[bytes]) -> list | None:
        """The fast path: write each event that is exactly the next one, from its frame.
        Returns the events from the first that is not (a gap: the task reads the log first),
        or None when all were written or skipped as duplicates."""
        for index, event in enumerate(events):
            event_id = event["id"]
            if event_id <= self.last_sent:
                continue
            if event_id != self.last_sent + 1:
                return events[index:]
            waiting = self._write(frames[index])
            self.last_sent = event_id
            self._wrote(waiting)
            if self._dropped:
                return None
        return None

    def behind(self, mark: int) -> bool:
        return hasattr(self, "last_sent") and max(self.last_sent, self._received) < mark

    def gone(self) -> bool:
        return self._ended

    # --- handlers --------------------------------------------------------------------------

    async def _catch_up(self, *, up_to: int | None) -> None:
        """Send stored events after last_sent (up to `up_to`), page by page."""
        while True:
            page = await runtime.run_db(
                events_between, room_name=self.room, after=self.last_sent, up_to=up_to
            )
            for message in page:
                await self.send_event(json.dumps(message))
                self.last_sent = message["id"]
            if not page or (up_to is not None and self.last_sent >= up_to):
                return

    async def _send_backlog(self, *, streams: list[int], up_to: int) -> None:
        """A late joiner's audio so far, page by page: memory per join is one page, whatever
        the backlog. Its events are older than the state sent before them and than anything
        live (held in the inbox until this returns)."""
        after = 0
        while page := await runtime.run_db(
            backlog_page, room_name=self.room, streams=streams, after=after, up_to=up_to
        ):
            for message in page:
                await self.send_event(json.dumps(message))
            after = page[-1]["id"]

    async def room_events(self, message: dict[str, Any]) -> None:
        """Live events from any worker. Late or missing ones are filled in from the log."""
        if not hasattr(self, "last_sent"):
            return
        for event in message["events"]:
            event_id = event["id"]
            if event_id <= self.last_sent:
                continue
            if event_id > self.last_sent + 1:
                await self._catch_up(up_to=event_id - 1)
            await self.send_event(event["json"])  # encoded once by the publisher
            self.last_sent = event_id

    async def room_resync(self, message: dict[str, Any]) -> None:
        """The hub's watchdog saw an event committed here that never came live: read the
        log up to now (later live events at or below what was read are dropped)."""
        if hasattr(self, "last_sent") and self.last_sent < message["up_to"]:
            await self._catch_up(up_to=None)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        body = {
            "error": "read_only",
            "detail": "Spectator sockets are read-only; send audio with POST /audio.",
            "field": None,
        }
        await self.send_json(
            self._error(body, room=self.room, event_id=getattr(self, "last_sent", 0))
        )

    @staticmethod
    def _error(body: dict[str, Any], *, room: str | None, event_id: int) -> dict[str, Any]:
        """Like every message: type, id, room, ts. An error is no event: its id is the last
        event id this socket has sent, so ids never go backwards."""
        return {"type": "error", "id": event_id, "room": room, "ts": iso(timezone.now()), **body}


def _left(task: asyncio.Task) -> None:
    _leaving.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.warning("spectator presence not removed (it will age out): %s", exc)
