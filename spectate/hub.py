"""One process's listeners of room events: spectator sockets and long-polls.

The process subscribes once per room (one channel of its own, added to `room.<name>`) and
hands each broadcast to the room's local listeners. Redis is only the fast path: a watchdog
reads the high-water marks (`Room.last_event_id`) of the rooms listened to here every
`PARLEY_SPECTATOR_RESYNC_S`, and a listener that has neither received nor been sent an
event committed before the previous look is told to catch up from the event log. So a
broken subscription (Redis restarted, a lost message, a subscription that could not be made
at connect) costs at most two looks of latency, never an event; while Redis is down the log
alone keeps every listener up to date.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol

from channels.layers import get_channel_layer
from django.conf import settings

from spectate.services import room_high_water
from streams.events import room_group
from streams.runtime import runtime

logger = logging.getLogger(__name__)

# A subscription Redis does not answer in this long is left to the watchdog.
SUBSCRIBE_TIMEOUT_S = 1.0
# How long the receiver waits before trying a failed channel layer again.
RETRY_S = 0.5
# Subscriptions are renewed this often: channel layers expire group members after a day.
RENEW_S = 3600.0


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

    def listeners(self, room: str) -> int:
        return len(self._rooms.get(room, ()))

    # --- the channel layer ---------------------------------------------------------------

    def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is loop:
            return
        self.loop = loop
        self._rooms, self._subscribed, self._subscribing, self._marks = {}, set(), {}, {}
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
            for listener in list(self._rooms.get(message.get("room", ""), ())):
                listener.deliver(message)

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
