"""Static files (admin, API docs) served by an ASGI wrapper instead of a sync middleware.

A middleware that is not async-capable (WhiteNoise's) makes Django hop every async request
through asgiref's one shared thread, twice: the hot `POST /audio` path would queue behind
slow sync views. Django's own ASGI static handler serves only STATIC_URL and hands every
other request straight to the application.
"""

from __future__ import annotations

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.exceptions import SuspiciousOperation
from django.http import Http404, HttpRequest, HttpResponseBase

# Recordings are served by a view at the seed's URL, /static/audio/<sid>.wav.
DYNAMIC_PREFIXES = ("/static/audio/",)


class StaticFilesHandler(ASGIStaticFilesHandler):
    def _should_handle(self, path: str) -> bool:
        return super()._should_handle(path) and not path.startswith(DYNAMIC_PREFIXES)

    def serve(self, request: HttpRequest) -> HttpResponseBase:
        """The file, or 404 for a path that names none: Django's finders raise
        SuspiciousFileOperation for `../` (a 500 otherwise) and ValueError for a NUL."""
        try:
            return super().serve(request)
        except (SuspiciousOperation, ValueError) as exc:
            raise Http404("No such static file.") from exc
