"""Production: DEBUG off, keys required, and the HTTPS settings `manage.py check --deploy` asks for.

TLS terminates in front of Django (nginx, a load balancer): `X-Forwarded-Proto: https` from
it marks a request secure. With PARLEY_HTTPS on (the default) plain-HTTP requests are
redirected to HTTPS (`/health` excepted, for load balancers' probes), cookies are sent over
HTTPS only and browsers are told to use HTTPS only (HSTS). Set PARLEY_HTTPS=0 only where
clients reach Parley over plain HTTP on purpose (a private network, a local trial).
"""

import os

from .base import *  # noqa: F403
from .base import env_bool, env_int

DEBUG = False
PARLEY_REQUIRE_AUTH = env_bool("PARLEY_REQUIRE_AUTH", True)
if os.environ.get("DJANGO_SECRET_KEY") is None:
    raise RuntimeError("DJANGO_SECRET_KEY must be set in production")
# Never "*" here: the names clients use to reach the deployment, comma-separated.
ALLOWED_HOSTS = [
    h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1").split(",") if h
]
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

PARLEY_HTTPS = env_bool("PARLEY_HTTPS", True)
SECURE_SSL_REDIRECT = PARLEY_HTTPS
SECURE_REDIRECT_EXEMPT = [r"^health$"]
SESSION_COOKIE_SECURE = PARLEY_HTTPS
CSRF_COOKIE_SECURE = PARLEY_HTTPS
SECURE_HSTS_SECONDS = env_int("PARLEY_HSTS_SECONDS", 365 * 24 * 3600) if PARLEY_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("PARLEY_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("PARLEY_HSTS_PRELOAD", True)
