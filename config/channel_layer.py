"""channels_redis's pub/sub channel layer, logging a Redis outage once instead of once a second.

channels_redis's receive task logs `Unexpected exception in receive task` with a full
traceback every second Redis is unreachable (a minute's outage: 60 tracebacks per worker),
and says nothing when Redis is back. Here the same loop logs one WARNING when the outage
starts and one INFO when messages can be received again; everything else is channels_redis's.

settings.CHANNEL_LAYERS uses it for `channels_redis.pubsub.RedisPubSubChannelLayer`, the
default PARLEY_CHANNEL_LAYER (config/settings/base.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from channels_redis import pubsub
from channels_redis.utils import _wrap_close

logger = logging.getLogger(__name__)


def where(host: dict[str, Any]) -> str:
    """A shard's Redis as host:port (its URL may hold a password)."""
    address = host.get("address")
    if isinstance(address, str):
        parts = urlsplit(address)
        return f"{parts.hostname}:{parts.port or 6379}"
    return str(address)


RETRY_S = 1.0  # channels_redis's own pause between attempts


class _Shard(pubsub.RedisSingleShardConnection):
    _failing = False

    async def _do_receiving(self) -> None:
        # channels_redis 4.x's loop, with the logging of an outage as described above.
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=0.1
                    )
                    if self._failing:
                        self._failing = False
                        logger.info(
                            "Redis %s is reachable again: room events flow", where(self.host)
                        )
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                if not self._failing:
                    self._failing = True
                    logger.warning(
                        "Redis %s is unreachable (%s: %s); the channel layer retries every "
                        "%.0f s and spectators are served from the event log meanwhile",
                        where(self.host),
                        type(exc).__name__,
                        exc,
                        RETRY_S,
                    )
                await asyncio.sleep(RETRY_S)


class _LoopLayer(pubsub.RedisPubSubLoopLayer):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._shards = [_Shard(shard.host, self) for shard in self._shards]


class RedisPubSubChannelLayer(pubsub.RedisPubSubChannelLayer):
    """channels_redis.pubsub.RedisPubSubChannelLayer whose receive task logs an outage once."""

    def _get_layer(self) -> _LoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer
