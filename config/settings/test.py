import os
import tempfile
from pathlib import Path

from .base import *  # noqa: F403
from .base import DATABASES, env_int

DEBUG = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# One test database per test process, so concurrent runs never share (and drop) one.
_database = DATABASES["default"]
if _database["ENGINE"] == "django.db.backends.sqlite3":
    _database["TEST"] = {"NAME": Path(tempfile.gettempdir()) / f"parley-test-{os.getpid()}.sqlite3"}
else:
    _database["TEST"] = {"NAME": f"test_{_database['NAME']}_{os.getpid()}"}

# Tests (and benches, which use these settings) synthesize every request unless a test turns
# the cache on: a shared var/tts-cache would make one run's answers depend on the last's.
PARLEY_TTS_CACHE_MAX_BYTES = env_int("PARLEY_TTS_CACHE_MAX_BYTES", 0)

# Each test process keeps its speech jobs' audio in its own folder (speech/job_audio.py).
PARLEY_SPEECH_AUDIO_DIR = Path(
    os.environ.get(
        "PARLEY_SPEECH_AUDIO_DIR",
        Path(tempfile.gettempdir()) / f"parley-speech-audio-{os.getpid()}",
    )
)
