"""bench.tts_cache's settings: the test settings with the synthesis cache on (the bench sets
its size and directory through the environment) and a FileResponse yardstick route."""

from config.settings.test import *  # noqa: F403

ROOT_URLCONF = "bench.tts_cache_urls"
