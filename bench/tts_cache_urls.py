"""The product's URLs plus GET /bench/file: a plain Django FileResponse of one file on disk,
the yardstick bench.tts_cache measures a cache hit against (the same bytes, read from the
same disk, through the same daphne, handler and middleware)."""

from django.conf import settings
from django.http import FileResponse, HttpRequest
from django.urls import path

from config.urls import urlpatterns as product_urlpatterns


def file_view(request: HttpRequest) -> FileResponse:
    return FileResponse(open(settings.VAR_DIR / "yardstick.bin", "rb"))


urlpatterns = [path("bench/file", file_view, name="bench-file"), *product_urlpatterns]
