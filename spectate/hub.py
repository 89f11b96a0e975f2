"""One process's listeners of room events: spectator sockets and long-polls.

The process subscribes once per room (one channel of its own, added to `room.<name>`) and
hands each broadcast to the room's local listeners. Redis is only the fast path: a watchdog
reads the high-water marks (`Room.last_event_id`) of the rooms listened to here every
`PARLEY_SPECTATOR_RESYNC_S`, and a listener that has neither received nor been sent an
event committed before the previous look is told to catch up from the event log. So a
broken subscription (Redis restarted, a lost message, a subscription that could not be made
at connect) costs at most two looks of latency, never an event; while Redis is down the log
alone keeps every listener up to date.

The hub hands its listeners each room's events in id order: a broadcast that arrives ahead
of a missing one (two workers' publishes cross in Redis) is held up to `HOLD_S` for it, and
then the hub reads the gap from the log itself, once for the room, instead of every socket
noticing the gap and reading it on its own (that was one query per socket and gap; with 500
sockets and two workers it made the fan-out fall seconds behind). Likewise when a look finds
the room ahead of what the hub received: one read of the log, handed to every listener.

Fan-out costs one encoding and one framing per event per process: the publisher JSON-encodes
each event once (streams/events.py), and `event_frames` builds its WebSocket text frame once,
here, for every local socket; a socket served by config/server.py writes those bytes as they
are (its "parley.frames" extension), with no per-socket message, task wake-up or framing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from spectate.services import events_between, room_high_water
from streams.events import room_group
from streams.runtime import runtime

logger = logging.getLogger(__name__)

# A subscription Redis does not answer in this long is left to the watchdog.
SUBSCRIBE_TIMEOUT_S = 1.0
# How long the receiver waits before trying a failed channel layer again.
RETRY_S = 0.5
# Subscriptions are renewed this often: channel layers expire group members after a day.
RENEW_S = 3600.0
# How long a broadcast that arrived ahead of a missing one waits for it before the hub reads
# the gap from the log.
HOLD_S = 0.05
# Broadcasts held behind one gap at most (the gap could not be read from the log).
HOLD_MAX = 500


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked WebSocket text frame (RFC 6455 §5.2, as a server sends it) of
    `payload` (UTF-8 bytes)."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def event_frames(message: dict[str, Any]) -> list[bytes]:
    """The text frames of a `room.events` message's events, in order: built at the first
    call, then kept in the message for every other socket of the process."""
    frames = message.get("frames")
    if frames is None:
        frames = message["frames"] = [text_frame(e["json"].encode()) for e in message["events"]]
    return frames


class Listener(Protocol):
    def deliver(self, message: dict[str, Any]) -> None:
        """Take a `room.events` or `room.resync` message; must not block."""

    def behind(self, mark: int) -> bool:
        """True if an event with id `mark` has neither been received nor sent."""

    def gone(self) -> bool:
        """True once the listener has ended (its leave may not have run)."""


class RoomHub:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._rooms: dict[str, set[Listener]] = {}
        self._subscribed: set[str] = set()
        self._subscribing: dict[str, asyncio.Future] = {}
        self._marks: dict[str, int] = {}
        self._channel: str | None = None
        self._channel_lock: asyncio.Lock | None = None
        self._tasks: list[asyncio.Task] = []
        self._failing = False
        self._renewed_at = 0.0
        # Per room: the id after the last one handed on in order, the broadcasts held
        # behind a gap, and the task filling a gap from the log.
        self._next: dict[str, int] = {}
        self._held: dict[str, list[dict[str, Any]]] = {}
        self._filling: dict[str, asyncio.Task] = {}

    # --- listeners -----------------------------------------------------------------------

    async def join(self, room: str, listener: Listener) -> None:
        """Listen to `room`. Subscribes the process if it was not yet; a channel layer that
        fails or is slow does not fail the join (the watchdog serves the room meanwhile)."""
        self._ensure_started()
        self._rooms.setdefault(room, set()).add(listener)
        if room not in self._subscribed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self._subscribe(room)), SUBSCRIBE_TIMEOUT_S)

    def leave(self, room: str, listener: Listener) -> None:
        """Stop listening (idempotent). The room's subscription ends at the next look."""
        listeners = self._rooms.get(room)
        if listeners is not None:
            listeners.discard(listener)
            if not listeners:
                del self._rooms[room]
                self._forget(room)

    def _forget(self, room: str) -> None:
        self._next.pop(room, None)
        self._held.pop(room, None)
        if (task := self._filling.pop(room, None)) is not None:
            task.cancel()

    def listeners(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    # --- the channel layer ---------------------------------------------------------------

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is loop:
            return
        self.loop = loop
        self._rooms, self._subscribed, self._subscribing, self._marks = {}, set(), {}, {}
        self._next, self._held, self._filling = {}, {}, {}
        self._channel = None
        self._channel_lock = asyncio.Lock()
        self._renewed_at = loop.time()
        self._tasks = [
            loop.create_task(self._receive_forever(), name="parley-room-hub"),
            loop.create_task(self._watch_forever(), name="parley-room-watchdog"),
        ]

    async def _process_channel(self) -> str:
        assert self._channel_lock is not None
        async with self._channel_lock:
            if self._channel is None:
                self._channel = await get_channel_layer().new_channel(prefix="spectators.")
            return self._channel

    def _subscribe(self, room: str) -> asyncio.Future:
        pending = self._subscribing.get(room)
        if pending is None:
            pending = self._subscribing[room] = asyncio.ensure_future(self._group_add(room))
        return pending

    async def _group_add(self, room: str) -> None:
        try:
            channel = await self._process_channel()
            await get_channel_layer().group_add(room_group(room), channel)
        except Exception as exc:
            self._failed("subscribing to a room", exc)
            raise
        else:
            self._subscribed.add(room)
        finally:
            self._subscribing.pop(room, None)

    async def _receive_forever(self) -> None:
        layer = get_channel_layer()
        while True:
            try:
                channel = await self._process_channel()
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed("receiving room events", exc)
                await asyncio.sleep(RETRY_S)
                continue
            room = message.get("room", "")
            if room not in self._rooms:
                continue
            if message.get("type") == "room.events" and message.get("events"):
                self._in_order(room, message)
            else:
                self._hand_on(room, message)

    # --- in order, once per room -----------------------------------------------------------

    def _hand_on(self, room: str, message: dict[str, Any]) -> None:
        for listener in list(self._rooms.get(room, ())):
            listener.deliver(message)

    def _in_order(self, room: str, message: dict[str, Any]) -> None:
        """Hand on a broadcast if it continues the room's ids; hold it behind a gap."""
        events = message["events"]
        expected = self._next.get(room)
        if expected is not None and events[0]["id"] > expected:
            held = self._held.setdefault(room, [])
            held.append(message)
            if len(held) > HOLD_MAX:
                # The log cannot be read (the database is down): hand them on as they are;
                # each socket fills its own gap once the log answers.
                self._next[room] = min(m["events"][0]["id"] for m in held)
                self._release(room)
                return
            if room not in self._filling:
                self._filling[room] = asyncio.ensure_future(self._fill_after(room, HOLD_S))
            return
        self._hand_on(room, message)
        if room in self._rooms:  # its last listener may have left meanwhile
            self._next[room] = max(expected or 0, events[-1]["id"] + 1)
            self._release(room)

    def _release(self, room: str) -> None:
        """Hand on the held broadcasts the room's ids now reach."""
        held = self._held.get(room)
        while held:
            held.sort(key=lambda m: m["events"][0]["id"])
            if held[0]["events"][0]["id"] > self._next[room]:
                return
            message = held.pop(0)
            self._hand_on(room, message)
            if room not in self._rooms:
                return
            self._next[room] = max(self._next[room], message["events"][-1]["id"] + 1)
        self._held.pop(room, None)
        task = self._filling.pop(room, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _fill_after(self, room: str, delay: float) -> None:
        """After `delay`, read the room's gap from the log once and hand it on."""
        try:
            await asyncio.sleep(delay)
            held = self._held.get(room)
            if held:
                await self.fill(room, up_to=min(m["events"][0]["id"] for m in held) - 1)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.warning("could not read a gap of room %s from the log", room, exc_info=True)
        finally:
            if self._filling.get(room) is asyncio.current_task():
                del self._filling[room]

    async def fill(self, room: str, *, up_to: int | None) -> None:
        """Read the room's events after the last handed on (up to `up_to`) from the log, page
        by page, and hand them on as broadcasts (encoded once here for every listener)."""
        while room in self._rooms and room in self._next:
            after = self._next[room] - 1
            if up_to is not None and after >= up_to:
                break
            page = await runtime.run_db(events_between, room_name=room, after=after, up_to=up_to)
            if not page or room not in self._next:
                break
            events = [{"id": m["id"], "json": json.dumps(m)} for m in page]
            self._hand_on(room, {"type": "room.events", "room": room, "events": events})
            if room not in self._next:
                return
            self._next[room] = max(self._next[room], events[-1]["id"] + 1)
        if room in self._next:
            self._release(room)

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            logger.info("channel layer subscriptions restored; rooms are live again")

    def _failed(self, what: str, exc: Exception) -> None:
        # One line per outage, not one per socket or retry.
        if not self._failing:
            self._failing = True
            logger.warning(
                "channel layer failed %s (%s); serving rooms from the event log", what, exc
            )

    # --- the watchdog --------------------------------------------------------------------

    async def _watch_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.PARLEY_SPECTATOR_RESYNC_S)
            try:
                await self.watch_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("spectator watchdog failed", exc_info=True)

    async def watch_once(self) -> None:
        """One look: drop ended listeners, (re)subscribe, catch up whoever fell behind."""
        for room, listeners in list(self._rooms.items()):
            for listener in [listener for listener in listeners if listener.gone()]:
                self.leave(room, listener)
        rooms = list(self._rooms)
        await self._tend_subscriptions(rooms)
        if not rooms:
            self._marks.clear()
            return
        marks = await runtime.run_clock_db(room_high_water, room_names=rooms)
        for room in rooms:
            previous = self._marks.get(room)
            handed_on = self._next.get(room)
            if handed_on is None:
                # Nothing received yet: the room's ids go on from here for the hub (listeners
                # joined before got what came before from their own join).
                self._next[room] = marks.get(room, 0) + 1
            elif previous is not None and handed_on <= previous and room not in self._filling:
                # Committed a look ago and never received: one read of the log for the room.
                await self.fill(room, up_to=None)
            if previous is not None:
                for listener in list(self._rooms.get(room, ())):
                    if listener.behind(previous):
                        listener.deliver({"type": "room.resync", "room": room, "up_to": previous})
            self._marks[room] = marks.get(room, 0)
        for room in set(self._marks) - set(rooms):
            del self._marks[room]

    async def _tend_subscriptions(self, rooms: list[str]) -> None:
        layer = get_channel_layer()
        loop = asyncio.get_running_loop()
        if loop.time() - self._renewed_at > RENEW_S:
            self._renewed_at = loop.time()
            self._subscribed.clear()
        for room in self._subscribed - set(rooms):
            self._subscribed.discard(room)
            with contextlib.suppress(Exception):
                await layer.group_discard(room_group(room), await self._process_channel())
        missing = [room for room in rooms if room not in self._subscribed]
        if not missing:
            self._recovered()
            return
        results = await asyncio.gather(
            *(
                asyncio.wait_for(asyncio.shield(self._subscribe(r)), SUBSCRIBE_TIMEOUT_S)
                for r in missing
            ),
            return_exceptions=True,
        )
        if not any(isinstance(result, BaseException) for result in results):
            self._recovered()


hub = RoomHub()
