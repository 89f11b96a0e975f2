"""Bench-only settings: the test settings plus a route to a bare view (see bare_urls.py).

The bench's daphne runs with DJANGO_SETTINGS_MODULE=bench.settings, so the product's URLs
never carry the bare view.
"""

from config.settings.test import *  # noqa: F403

ROOT_URLCONF = "bench.bare_urls"
