"""API keys: `Authorization: Bearer <key>` names the speaker (PARLEY_REQUIRE_AUTH)."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, permissions

from streams.errors import ApiError
from streams.models import ApiKey

KEY_PREFIX = "pk_"
# Long enough to spare the chunk path a query per request, short enough that a key revoked
# in the admin stops working on every worker within seconds.
_CACHE_TTL_S = 5.0
_cache: dict[str, tuple[float, Speaker | None]] = {}


@dataclass(frozen=True)
class Speaker:
    """The authenticated caller: a speaker name, possibly a moderator."""

    name: str
    is_moderator: bool = False
    is_authenticated: bool = True


def hash_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


def api_key_create(*, speaker: str, moderator: bool = False) -> tuple[ApiKey, str]:
    """Create a key; the raw key is returned once and only its hash is stored."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        speaker=speaker, prefix=raw[:10], key_hash=hash_key(raw), is_moderator=moderator
    )
    return key, raw


def speaker_for_key(raw_key: str) -> Speaker | None:
    """Look a key up, cached briefly: the chunk path must not pay a query per request."""
    digest = hash_key(raw_key)
    cached = _cache.get(digest)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    key = ApiKey.objects.filter(key_hash=digest, revoked_at__isnull=True).first()
    speaker = Speaker(key.speaker, key.is_moderator) if key else None
    if key is not None:
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=timezone.now())
    _cache[digest] = (now + _CACHE_TTL_S, speaker)
    return speaker


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(
            "invalid_authorization",
            "Authorization must be 'Bearer <api key>'.",
            field="Authorization",
            status_code=401,
        )
    return token.strip()


def authenticate(authorization: str | None) -> Speaker | None:
    token = bearer_token(authorization)
    if token is None:
        return None
    speaker = speaker_for_key(token)
    if speaker is None:
        raise ApiError(
            "invalid_api_key",
            "The API key is unknown or revoked.",
            field="Authorization",
            status_code=401,
        )
    return speaker


def require_writer(principal: Speaker | None) -> None:
    if settings.PARLEY_REQUIRE_AUTH and principal is None:
        raise ApiError(
            "auth_required",
            "This server requires 'Authorization: Bearer <api key>' for writes.",
            field="Authorization",
            status_code=401,
        )


def resolve_speaker(principal: Speaker | None, requested: str | None, default: str) -> str:
    """The key's speaker wins; a body naming someone else is refused, not silently replaced."""
    if principal is None:
        return requested or default
    if requested and requested != principal.name:
        raise ApiError(
            "speaker_mismatch",
            f"This API key speaks as {principal.name!r}, not {requested!r}.",
            field="speaker",
            status_code=403,
        )
    return principal.name


class ApiKeyAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request):  # type: ignore[override]
        speaker = authenticate(request.headers.get("Authorization"))
        if speaker is None:
            return None
        return speaker, None

    def authenticate_header(self, request) -> str:
        return "Bearer"


class WritesNeedKeyWhenRequired(permissions.BasePermission):
    def has_permission(self, request, view) -> bool:
        if request.method in permissions.SAFE_METHODS or not settings.PARLEY_REQUIRE_AUTH:
            return True
        if isinstance(request.user, Speaker):
            return True
        require_writer(None)  # the same auth_required answer as POST /audio
        return False


class ApiKeyScheme(OpenApiAuthenticationExtension):
    """Describes the bearer API key in the OpenAPI schema."""

    target_class = "streams.auth.ApiKeyAuthentication"
    name = "apiKey"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "`create_api_key <speaker>`"}
