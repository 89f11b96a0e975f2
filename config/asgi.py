"""ASGI entry point: HTTP to Django, WebSocket to Channels, /socket.io/ to python-socketio,
runtime started on first call."""

import gc
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.dev")
# Build Django before importing anything that touches models.
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import get_resolver, re_path  # noqa: E402

from config.handlers import ApiASGIHandler, is_api_path  # noqa: E402
from config.static import StaticFilesHandler  # noqa: E402
from config.websocket import NotFoundConsumer, close_when_unavailable  # noqa: E402
from recordings.sio import mount as mount_socketio  # noqa: E402
from spectate.routing import websocket_urlpatterns  # noqa: E402
from streams.runtime import runtime  # noqa: E402

api_application = ApiASGIHandler()
pages_application = StaticFilesHandler(django_application)


async def http_application(scope, receive, send):
    # The JSON/audio API skips the browser-page middleware (config/handlers.py).
    handler = api_application if is_api_path(scope["path"]) else pages_application
    await handler(scope, receive, send)


router = ProtocolTypeRouter(
    {
        "http": http_application,
        # Any other path: closed with 4404 and a reason, not the router's HTTP 500; the
        # database down: 4503 and a reason, not a 500 or a bare 1011 (config/websocket.py).
        "websocket": close_when_unavailable(
            URLRouter([*websocket_urlpatterns, re_path(r"", NotFoundConsumer.as_asgi())])
        ),
    }
)
# The Socket.IO recording endpoint (recordings/sio.py) sits beside the Channels router.
router = mount_socketio(router)


def _freeze_startup_objects() -> None:
    """Move everything loaded so far out of the garbage collector's sight.

    Django, DRF, Channels and the URLconf are hundreds of thousands of long-lived objects.
    Every full collection walked them all: 80-190 ms pauses that were the whole p99 of chunk
    latency (docs/benchmarks.md). Objects created later are collected as usual.
    """
    _ = get_resolver().url_patterns  # import every view now, not on the first request
    gc.collect()
    gc.freeze()


_freeze_startup_objects()


async def application(scope, receive, send):
    # Daphne sends no lifespan events: the first call of each loop starts the runtime.
    runtime.ensure_started()
    await router(scope, receive, send)
