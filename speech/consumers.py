"""Progress pushed to WebSocket subscribers: one job, or every job.

``/v1/status/progress/ws`` streams every job's progress; ``/v1/status/progress/{job_id}/ws``
sends that job's current progress at once, then each update, and closes after the final one.
Read-only, like the spectator socket.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Any

from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from speech import selectors
from speech.services import ALL_JOBS_GROUP, job_group, live_job
from streams.runtime import runtime

CLOSE_NOT_FOUND = 4404
TERMINAL_PROGRESS = {"completed", "cancelled", "error"}


class JobProgressConsumer(AsyncJsonWebsocketConsumer):
    job_id: uuid.UUID | None = None
    group: str = ""

    async def connect(self) -> None:
        raw = self.scope["url_route"]["kwargs"].get("job_id")
        if raw is None:
            self.group = ALL_JOBS_GROUP
            await self.channel_layer.group_add(self.group, self.channel_name)
            await self.accept()
            return
        try:
            self.job_id = uuid.UUID(raw)
        except ValueError:
            return await self._refuse("invalid_job_id", f"{raw!r} is not a job id (a UUID).")
        # Subscribe before reading the snapshot, so no update falls between the two.
        self.group = job_group(self.job_id)
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        live = live_job(self.job_id)
        if live is not None:
            snapshot = selectors.progress_of(live)
        else:
            record = await runtime.run_db(selectors.job_by_id, self.job_id)
            if record is None:
                return await self._refuse("job_not_found", f"No speech job {raw}.", accepted=True)
            snapshot = selectors.progress_of(record)
        await self.send_json({"type": "speech.progress", "progress": snapshot})
        if snapshot["status"] in TERMINAL_PROGRESS:
            await self.close()

    async def _refuse(self, code: str, detail: str, *, accepted: bool = False) -> None:
        if not accepted:
            await self.accept()
        await self.send_json({"type": "error", "error": code, "detail": detail, "field": "job_id"})
        await self.close(code=CLOSE_NOT_FOUND)

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        async def quiet_send(message: dict[str, Any]) -> None:
            try:
                await send(message)
            except Exception as exc:
                # daphne raises "send on a closed protocol" for a client that closed while
                # an update or the close was on its way (e.g. right after the final one):
                # the socket is gone, so is this consumer. Channels' loop ends quietly on
                # StopConsumer; disconnect() will not run, so leave the group here.
                with contextlib.suppress(Exception):
                    await self.disconnect(1006)
                raise StopConsumer from exc

        # Every send (send_json, close, accept) goes through base_send, set from this.
        await super().__call__(scope, receive, quiet_send)

    async def speech_progress(self, message: dict[str, Any]) -> None:
        await self.send_json({"type": "speech.progress", "progress": message["progress"]})
        if self.job_id is not None and message["progress"]["status"] in TERMINAL_PROGRESS:
            await self.close()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        await self.send_json(
            {
                "type": "error",
                "error": "read_only",
                "detail": "Progress sockets are read-only.",
                "field": None,
            }
        )
