import os

from .base import *  # noqa: F403
from .base import env_bool

DEBUG = False
PARLEY_REQUIRE_AUTH = env_bool("PARLEY_REQUIRE_AUTH", True)
if os.environ.get("DJANGO_SECRET_KEY") is None:
    raise RuntimeError("DJANGO_SECRET_KEY must be set in production")
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
