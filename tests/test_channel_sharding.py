"""Room events over several Redis servers (PARLEY_CHANNEL_REDIS_URLS, docs/scaling.md)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import redis

from tests.support.servers import PROJECT_ROOT, EmbeddedRedis


def test_the_setting_lists_every_server_for_the_channel_layer():
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "PARLEY_CHANNEL_REDIS_URLS": " redis://127.0.0.1:2/0 , redis://127.0.0.1:3/0,",
    }
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.CHANNEL_LAYERS['default']['CONFIG']['hosts']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [
        "redis://127.0.0.1:2/0",
        "redis://127.0.0.1:3/0",
    ]


def test_rooms_are_spread_over_the_servers_and_every_event_arrives():
    from config.channel_layer import RedisPubSubChannelLayer

    with EmbeddedRedis() as one, EmbeddedRedis() as two:

        async def run() -> dict[str, list[str]]:
            layer = RedisPubSubChannelLayer(hosts=[one.url, two.url], prefix="shard-test")
            rooms = [f"room.r{n}" for n in range(16)]
            channels = {}
            for room in rooms:
                channels[room] = await layer.new_channel()
                await layer.group_add(room, channels[room])
            subscribed = {
                server.url: redis.Redis.from_url(server.url).pubsub_channels()
                for server in (one, two)
            }
            for room in rooms:
                await layer.group_send(room, {"type": "room.events", "text": room})
            got = {
                room: (await asyncio.wait_for(layer.receive(channels[room]), 10))["text"]
                for room in rooms
            }
            assert got == {room: room for room in rooms}
            await layer.flush()
            return subscribed

        subscribed = asyncio.run(run())
    # Both servers carry some of the rooms (16 names over 2 shards by hash).
    assert all(subscribed[url] for url in subscribed), subscribed
