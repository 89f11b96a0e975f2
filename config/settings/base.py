"""Settings shared by every environment; everything a deployment changes comes from the env."""

import os
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("PARLEY_VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-insecure-parley-key-change-me")
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h]
CSRF_TRUSTED_ORIGINS = [
    o for o in os.environ.get("DJANGO_CSRF_TRUSTED_ORIGINS", "").split(",") if o
]

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "corsheaders",
    "streams",
    "ingest",
    "spectate",
    "speech",
    "speechws",
    "longform",
    "chat",
    "recordings",
    "agents",
    "web",
]

MIDDLEWARE = [
    # Outermost: errors on OpenAI-compatible paths in OpenAI's shape (config/error_shapes.py),
    # as the API's own handler answers them.
    "config.handlers.OpenAIErrorShapeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # CORS on API paths only (CORS_URLS_REGEX); the API's own handler runs it too
    # (config/handlers.py). Before CommonMiddleware, as django-cors-headers asks.
    "corsheaders.middleware.CorsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]


def database_from_env() -> dict:
    """SQLite (WAL) under var/ by default; PostgreSQL (psycopg 3, pooled) from DATABASE_URL."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "parley.sqlite3",
            # Persistent per-thread connections: reopening SQLite re-runs the PRAGMAs.
            "CONN_MAX_AGE": None,
            "OPTIONS": {
                # IMMEDIATE takes the write lock up front, so two writers queue on the
                # busy timeout instead of failing with "database is locked" on upgrade.
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
                # The server checkpoints the WAL from a thread of its own (streams/runtime.py);
                # SQLite's own auto-checkpoint, inside some commit, is only the safety net.
                "init_command": (
                    "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000;"
                    " PRAGMA wal_autocheckpoint=20000;"
                ),
            },
            "TEST": {"NAME": VAR_DIR / "test-parley.sqlite3"},
        }
    config = dj_database_url.parse(url, conn_max_age=0)
    if config["ENGINE"] == "django.db.backends.postgresql":
        # Under ASGI every request may run on another thread: a pool, not persistent conns.
        config["CONN_MAX_AGE"] = 0
        config.setdefault("OPTIONS", {})["pool"] = {
            "min_size": 1,
            "max_size": env_int("PARLEY_DB_POOL_SIZE", 20),
            # How long a request waits for a connection; then it answers 503 (the database
            # is down or every connection is busy). The pool reconnects by itself.
            "timeout": env_float("PARLEY_DB_POOL_TIMEOUT_S", 10.0),
        }
    return config


DATABASES = {"default": database_from_env()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
# Room events over several Redis servers (docs/scaling.md): channels_redis shards each group
# (room) and channel by a hash of its name over these, comma-separated; REDIS_URL alone if
# unset. Socket.IO's manager (recordings/sio.py) stays on REDIS_URL.
CHANNEL_REDIS_URLS = [
    url.strip() for url in os.environ.get("PARLEY_CHANNEL_REDIS_URLS", "").split(",") if url.strip()
] or ([REDIS_URL] if REDIS_URL else [])
if REDIS_URL:
    _layer = os.environ.get("PARLEY_CHANNEL_LAYER", "channels_redis.pubsub.RedisPubSubChannelLayer")
    if _layer == "channels_redis.pubsub.RedisPubSubChannelLayer":
        # The same layer, logging a Redis outage once, not a traceback a second.
        _layer = "config.channel_layer.RedisPubSubChannelLayer"
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": _layer,
            # A prefix per deployment lets several share one Redis (and the tests run in one).
            "CONFIG": {
                "hosts": CHANNEL_REDIS_URLS,
                "prefix": os.environ.get("PARLEY_CHANNEL_PREFIX", "parley"),
            },
        }
    }
else:
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            "CONFIG": {"capacity": 1000},
        }
    }

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Largest non-multipart request body (JSON, form, raw PCM): Django's 2.5 MB default, stated
# because nginx's client_max_body_size (deploy/nginx.conf) must match it. A 1 MiB chunk as
# base64 JSON is about 1.4 MB.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("PARLEY_MAX_BODY_BYTES", 2621440)

STATIC_URL = "static/"
# Served from the apps' static folders by config/static.py: no collectstatic step needed.
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = VAR_DIR / "media"

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_AUTHENTICATION_CLASSES": ["streams.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["streams.auth.WritesNeedKeyWhenRequired"],
    "DEFAULT_PAGINATION_CLASS": "streams.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "streams.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    # JSON only, whatever the Accept header or a `?format=` asks (config/negotiation.py).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "config.negotiation.FirstRendererFallback",
    "URL_FORMAT_OVERRIDE": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Parley API",
    "DESCRIPTION": "Server-authoritative real-time speech in shared rooms.",
    "VERSION": "0.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI and ReDoc from local files: no CDN is reachable from every deployment.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "config.schema.add_async_endpoints",
        "speech.openapi.add_speech_endpoints",
        "agents.openapi.add_agent_endpoints",
        "longform.openapi.add_longform_endpoints",
        # Range/If-Range, 206 and 416 on every audio URL (config/http_ranges.py).
        "config.http_ranges.document_ranges",
        # Last: every operation's security and error answers (config/schema.py).
        "config.schema.document_access_and_errors",
    ],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("PARLEY_LOG_LEVEL", "WARNING")},
    # Django's default config gives "django" its own console handler (with DEBUG) as well:
    # every django.request warning was printed twice. Only the root's handler prints.
    "loggers": {"django": {"handlers": [], "level": os.environ.get("PARLEY_LOG_LEVEL", "WARNING")}},
}

# Browser pages on other origins calling the API (docs/api.md "CORS"): the JSON/audio paths,
# their preflights and the Socket.IO endpoint. PARLEY_CORS_ORIGINS is "*" (any page: the API
# takes keys in headers, never cookies) or comma-separated origins (scheme://host[:port]).
# PARLEY_CHAT_CORS_ORIGINS and PARLEY_SOCKETIO_CORS_ORIGINS are its deprecated old names.
PARLEY_CORS_ORIGINS = (
    os.environ.get("PARLEY_CORS_ORIGINS")
    or os.environ.get("PARLEY_CHAT_CORS_ORIGINS")
    or os.environ.get("PARLEY_SOCKETIO_CORS_ORIGINS")
    or "*"
)


def cors_origins(value: str) -> dict:
    """django-cors-headers' origin settings for a PARLEY_CORS_ORIGINS value."""
    origins = [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
    if "*" in origins:
        return {"CORS_ALLOW_ALL_ORIGINS": True, "CORS_ALLOWED_ORIGINS": []}
    return {"CORS_ALLOW_ALL_ORIGINS": False, "CORS_ALLOWED_ORIGINS": origins}


_cors = cors_origins(PARLEY_CORS_ORIGINS)
CORS_ALLOW_ALL_ORIGINS = _cors["CORS_ALLOW_ALL_ORIGINS"]
CORS_ALLOWED_ORIGINS = _cors["CORS_ALLOWED_ORIGINS"]
# The API paths (config/handlers.API_PREFIXES) and the schema; pages and the admin get none.
CORS_URLS_REGEX = (
    r"^/(?:audio|api/|v1/|chat|health|memory|streaming/|static/audio/|openapi\.json$|asyncapi\.yaml$"
    r"|status|processing|history|stats|info|ping|config|endpoints|routes|languages)"
)
# Request headers a page may send: JSON bodies and keys, byte ranges, the recording key, and
# what the OpenAI JS SDK adds (openai-*, x-stainless-*). "*" admits any other non-credential
# header in current browsers (never Authorization, hence listed).
CORS_ALLOW_HEADERS = (
    "accept",
    "authorization",
    "content-type",
    "user-agent",
    "x-requested-with",
    "x-api-key",
    "range",
    "if-range",
    "x-streaming-key",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "idempotency-key",
    "x-stainless-arch",
    "x-stainless-async",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
    "x-stainless-helper-method",
    "x-stainless-poll-helper",
    "*",
)
# Response headers a page's script may read besides the CORS-safelisted ones.
CORS_EXPOSE_HEADERS = (
    "Accept-Ranges",
    "Content-Range",
    "Content-Length",
    "Content-Disposition",
    "ETag",
    "Retry-After",
    "X-Audio-Format",
    "X-Audio-Quality",
    "X-Bitrate",
    "X-Bits-Per-Sample",
    "X-Cache",
    "X-Channels",
    "X-Chunk-Size",
    "X-Sample-Rate",
    "X-Speech-Engine",
    "X-Speech-Job-Id",
    "X-Speed-Applied",
)
CORS_PREFLIGHT_MAX_AGE = 600  # seconds a browser may reuse a preflight's answer

# Parley's own knobs (documented in the README).
PARLEY_TURN_LEASE_S = env_float("PARLEY_TURN_LEASE_S", 30.0)
PARLEY_GAP_TIMEOUT_S = env_float("PARLEY_GAP_TIMEOUT_S", 5.0)
PARLEY_MAX_CHUNK_BYTES = env_int("PARLEY_MAX_CHUNK_BYTES", 1024 * 1024)
# WS /ws/audio (ingest/session.py): chunks a client may send ahead of their acknowledgements.
PARLEY_INGEST_WS_WINDOW = env_int("PARLEY_INGEST_WS_WINDOW", 64)
PARLEY_MAX_STREAM_BYTES = env_int("PARLEY_MAX_STREAM_BYTES", 50 * 1024 * 1024)
# Chunks (so seqs) a stream may have: by default as many 10 ms chunks of the default format
# (24 kHz 16-bit mono, 480 bytes) as the byte limit holds. It bounds what a seq can make the
# server list or track, whatever the client sends.
PARLEY_MAX_CHUNKS_PER_STREAM = env_int(
    "PARLEY_MAX_CHUNKS_PER_STREAM", PARLEY_MAX_STREAM_BYTES // (24000 * 2 // 100)
)
PARLEY_REQUIRE_AUTH = env_bool("PARLEY_REQUIRE_AUTH", False)
PARLEY_SWEEP_INTERVAL_S = env_float("PARLEY_SWEEP_INTERVAL_S", 1.0)
PARLEY_SCHEDULER = env_bool("PARLEY_SCHEDULER", True)
PARLEY_LONGPOLL_MAX_S = env_float("PARLEY_LONGPOLL_MAX_S", 30.0)
PARLEY_SPECTATOR_STALE_S = env_float("PARLEY_SPECTATOR_STALE_S", 90.0)
# How often each process compares its listeners with the event log (spectate/hub.py): an
# event the channel layer lost reaches them from the log within two of these.
PARLEY_SPECTATOR_RESYNC_S = env_float("PARLEY_SPECTATOR_RESYNC_S", 1.0)
# A spectator socket whose unsent bytes (beyond the kernel's buffers) pass this is closed with
# 4429 to resume with `after=`: a slow client never holds the room or the process's memory.
PARLEY_SPECTATOR_BUFFER_BYTES = env_int("PARLEY_SPECTATOR_BUFFER_BYTES", 1024 * 1024)
# Live messages a spectator socket may hold while it reads the log (join, catch-up); past it
# they are dropped and the socket reads them from the log instead (no close).
PARLEY_SPECTATOR_QUEUE = env_int("PARLEY_SPECTATOR_QUEUE", 256)
PARLEY_DB_THREADS = env_int("PARLEY_DB_THREADS", 8)
# PostgreSQL: single threads that POST /audio's chunks queue on, by room (streams/runtime.py
# run_room_db), so a room's chunks reach the database in the order they arrived.
PARLEY_DB_ROOM_LANES = env_int("PARLEY_DB_ROOM_LANES", 4)
# SQLite: how often the server checkpoints the WAL, off the request path.
PARLEY_SQLITE_CHECKPOINT_S = env_float("PARLEY_SQLITE_CHECKPOINT_S", 5.0)
# Threads for timers and the sweeper on PostgreSQL (SQLite's one DB thread serves them first).
PARLEY_CLOCK_THREADS = env_int("PARLEY_CLOCK_THREADS", 4)
# A release timer reads what it will write this long before the predicted end.
PARLEY_RELEASE_PREPARE_S = env_float("PARLEY_RELEASE_PREPARE_S", 0.05)
# Other processes' sweepers stand by this long after a release is due, in case its owner died.
PARLEY_RELEASE_BACKUP_S = env_float("PARLEY_RELEASE_BACKUP_S", 0.1)

# Chat with spoken answers and speaking into rooms (chat/, docs/chat.md).
# Who answers POST /chat: "builtin" (deterministic, no network), "llm" (an OpenAI-compatible
# chat-completions server), or a comma-separated fallback chain such as "llm,builtin".
PARLEY_RESPONDER = os.environ.get("PARLEY_RESPONDER", "builtin")
PARLEY_LLM_URL = os.environ.get("PARLEY_LLM_URL", "")  # base URL, e.g. http://host:11434/v1
PARLEY_LLM_MODEL = os.environ.get("PARLEY_LLM_MODEL", "gpt-4o-mini")
PARLEY_LLM_KEY = os.environ.get("PARLEY_LLM_KEY", "")
PARLEY_LLM_TIMEOUT_S = env_float("PARLEY_LLM_TIMEOUT_S", 30.0)
# How long the stream_url of a POST /chat answer stays valid before its first GET.
PARLEY_STREAM_TTL_S = env_float("PARLEY_STREAM_TTL_S", 300.0)
# Recording sessions (recordings/, docs/recordings.md).
PARLEY_MAX_RECORDING_S = env_float("PARLEY_MAX_RECORDING_S", 3600.0)
PARLEY_RECORDING_IDLE_S = env_float("PARLEY_RECORDING_IDLE_S", 60.0)
PARLEY_RECORDINGS_DIR = Path(os.environ.get("PARLEY_RECORDINGS_DIR", VAR_DIR / "recordings"))
PARLEY_RECORDINGS_ROOM = os.environ.get("PARLEY_RECORDINGS_ROOM", "recordings")

# Speech synthesis (docs/speech.md). The default engine answers tts-1, tts-1-hd and
# gpt-4o-mini-tts; a request picks another with model=<engine name>.
PARLEY_TTS_ENGINE = os.environ.get("PARLEY_TTS_ENGINE", "espeak")
PARLEY_PIPER_VOICE = os.environ.get("PARLEY_PIPER_VOICE", "")
PARLEY_OPENAI_TTS_URL = os.environ.get("PARLEY_OPENAI_TTS_URL", "")
PARLEY_OPENAI_TTS_KEY = os.environ.get("PARLEY_OPENAI_TTS_KEY", "")
PARLEY_OPENAI_TTS_MODEL = os.environ.get("PARLEY_OPENAI_TTS_MODEL", "tts-1")
PARLEY_OPENAI_TTS_SAMPLE_RATE = env_int("PARLEY_OPENAI_TTS_SAMPLE_RATE", 24000)
PARLEY_TTS_MAX_VOICE_BYTES = env_int("PARLEY_TTS_MAX_VOICE_BYTES", 10 * 1024 * 1024)
# A queued/running speech job whose row nobody wrote (heartbeat) this long is marked failed.
PARLEY_SPEECH_JOB_STALE_S = env_float("PARLEY_SPEECH_JOB_STALE_S", 90.0)
# Each speech job's audio as a WAV (speech/job_audio.py; the admin's players and
# GET /v1/audio/speech/jobs/{id}/audio.wav): the oldest are deleted past the folder's total,
# a job's file stops growing at its own cap (10 min at 24 kHz); 0 keeps nothing.
PARLEY_SPEECH_AUDIO_DIR = Path(os.environ.get("PARLEY_SPEECH_AUDIO_DIR", VAR_DIR / "speech-audio"))
PARLEY_SPEECH_AUDIO_MAX_BYTES = env_int("PARLEY_SPEECH_AUDIO_MAX_BYTES", 512 * 1024 * 1024)
PARLEY_SPEECH_AUDIO_MAX_JOB_BYTES = env_int("PARLEY_SPEECH_AUDIO_MAX_JOB_BYTES", 600 * 24000 * 2)
# Long text jobs (POST /v1/audio/speech/long, docs/speech.md "Long text jobs"): the longest
# input, the characters of each stored piece, and how long a worker's claim on a job lasts
# without renewal (a job of a killed worker is taken over by another after this).
PARLEY_TTS_LONG_MAX_CHARS = env_int("PARLEY_TTS_LONG_MAX_CHARS", 100_000)
PARLEY_TTS_LONG_PIECE_CHARS = env_int("PARLEY_TTS_LONG_PIECE_CHARS", 500)
PARLEY_TTS_LONG_LEASE_S = env_float("PARLEY_TTS_LONG_LEASE_S", 30.0)
# WS /v1/audio/speech/ws (docs/speech.md "WebSocket: text in, audio out"): the largest client
# frame, text per append and per session, the idle close, how far audio may run ahead of the
# listener's real-time playhead, and the audio per frame.
PARLEY_TTS_WS_MAX_FRAME_BYTES = env_int("PARLEY_TTS_WS_MAX_FRAME_BYTES", 64 * 1024)
PARLEY_TTS_WS_MAX_APPEND_CHARS = env_int("PARLEY_TTS_WS_MAX_APPEND_CHARS", 4096)
PARLEY_TTS_WS_MAX_SESSION_CHARS = env_int("PARLEY_TTS_WS_MAX_SESSION_CHARS", 100_000)
PARLEY_TTS_WS_IDLE_S = env_float("PARLEY_TTS_WS_IDLE_S", 60.0)
PARLEY_TTS_WS_LEAD_MS = env_int("PARLEY_TTS_WS_LEAD_MS", 5000)
PARLEY_TTS_WS_FRAME_MS = env_int("PARLEY_TTS_WS_FRAME_MS", 200)
# Cache of finished syntheses (docs/speech.md "Cache"): a repeated request is served from
# disk without synthesis. At most PARLEY_TTS_CACHE_MAX_BYTES in all (0 turns it off), no entry
# over PARLEY_TTS_CACHE_MAX_ENTRY_BYTES; only engines (names or kinds) whose output is the
# same for the same request: eSpeak NG. Piper samples noise (each synthesis differs) and a
# remote server may too: add "piper" or "openai" to serve one rendering again and again.
PARLEY_TTS_CACHE_DIR = Path(os.environ.get("PARLEY_TTS_CACHE_DIR", VAR_DIR / "tts-cache"))
PARLEY_TTS_CACHE_MAX_BYTES = env_int("PARLEY_TTS_CACHE_MAX_BYTES", 256 * 1024 * 1024)
PARLEY_TTS_CACHE_MAX_ENTRY_BYTES = env_int("PARLEY_TTS_CACHE_MAX_ENTRY_BYTES", 16 * 1024 * 1024)
PARLEY_TTS_CACHE_ENGINES = tuple(
    name.strip()
    for name in os.environ.get("PARLEY_TTS_CACHE_ENGINES", "espeak").split(",")
    if name.strip()
)

# Voice agent (agents/, docs/agent.md, seed 003).
# Speech-to-text: "whisper" (offline, faster-whisper + Whisper tiny.en shipped as a package) or
# "openai" (any OpenAI-compatible /v1/audio/transcriptions server, e.g. another Parley).
PARLEY_STT_ENGINE = os.environ.get("PARLEY_STT_ENGINE", "whisper")
PARLEY_STT_URL = os.environ.get("PARLEY_STT_URL", "")  # base URL, e.g. http://host:8000/v1
PARLEY_STT_KEY = os.environ.get("PARLEY_STT_KEY", "")
PARLEY_STT_MODEL = os.environ.get("PARLEY_STT_MODEL", "whisper-1")
PARLEY_STT_TIMEOUT_S = env_float("PARLEY_STT_TIMEOUT_S", 30.0)
# CPU threads of one Whisper transcription; transcriptions of a process run one at a time.
PARLEY_STT_THREADS = env_int("PARLEY_STT_THREADS", 2)
# Largest upload of POST /v1/audio/transcriptions (OpenAI's limit is 25 MB).
PARLEY_STT_MAX_BYTES = env_int("PARLEY_STT_MAX_BYTES", 25 * 1024 * 1024)
# Largest multipart body of any API request (voice uploads, transcriptions): a bigger
# Content-Length is refused with 413 before the body is read (config/handlers.py). Other
# bodies are capped at DATA_UPLOAD_MAX_MEMORY_SIZE. deploy/nginx.conf uses the same numbers.
PARLEY_MAX_UPLOAD_BYTES = env_int("PARLEY_MAX_UPLOAD_BYTES", PARLEY_STT_MAX_BYTES + 1024 * 1024)
# Longest audio it transcribes, in seconds: a header promising more is refused before
# decoding, and ffmpeg stops past it (a small compressed file can hold hours of audio).
PARLEY_STT_MAX_SECONDS = env_float("PARLEY_STT_MAX_SECONDS", 1800.0)
# Who answers the agent: PARLEY_RESPONDER's chain unless set ("builtin", "llm", "llm,builtin").
PARLEY_AGENT_RESPONDER = os.environ.get("PARLEY_AGENT_RESPONDER", "")
# Agent audio goes out at most this far ahead of the listener's playhead.
PARLEY_AGENT_LEAD_MS = env_int("PARLEY_AGENT_LEAD_MS", 300)
# Server VAD defaults (session.update's vad overrides them per session).
PARLEY_AGENT_VAD_THRESHOLD = env_float("PARLEY_AGENT_VAD_THRESHOLD", 0.5)
PARLEY_AGENT_SILENCE_MS = env_int("PARLEY_AGENT_SILENCE_MS", 600)
PARLEY_AGENT_BARGE_IN_MS = env_int("PARLEY_AGENT_BARGE_IN_MS", 200)
# Longest user utterance kept for transcription; longer speech ends the turn there.
PARLEY_AGENT_MAX_UTTERANCE_S = env_float("PARLEY_AGENT_MAX_UTTERANCE_S", 60.0)
# Largest WebSocket frame of /ws/agent (binary audio or JSON with base64 audio).
PARLEY_AGENT_MAX_FRAME_BYTES = env_int("PARLEY_AGENT_MAX_FRAME_BYTES", 256 * 1024)
