"""Each web process saves recordings whose worker died (like the core's release sweeper).

Daphne has no lifespan, so the sweeper starts on the first ASGI call of each event loop
(recordings.sio.mount wraps the application for that).
"""

from __future__ import annotations

import asyncio
import logging

from django.conf import settings

from recordings import services
from recordings.sessions import run_blocking

logger = logging.getLogger(__name__)


class AbandonedSweeper:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self.task: asyncio.Task | None = None

    def ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self.loop is loop or not settings.PARLEY_SCHEDULER:
            return
        self.loop = loop
        self.task = loop.create_task(self._run(), name="parley-recordings-sweeper")

    async def _run(self) -> None:
        while True:
            idle_s = settings.PARLEY_RECORDING_IDLE_S
            try:
                await run_blocking(services.recordings_finish_abandoned, idle_s=idle_s)
            except Exception:
                logger.exception("saving abandoned recordings failed")
            await asyncio.sleep(min(max(idle_s / 2, 0.5), 30.0))


sweeper = AbandonedSweeper()
