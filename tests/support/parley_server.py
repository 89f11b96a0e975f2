"""One real Parley server (`python -m config.server`) on the current leg's database, with an
API key: the fuzz suites, the connection and outage tests and bench/fuzz*.py start it.

The leg is the one the suite runs on: SQLite and the in-memory layer by default; a fresh
database on $DATABASE_URL's PostgreSQL and a private channel prefix on $REDIS_URL when set.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from tests.support.servers import PARLEY_SERVER, PROJECT_ROOT, DaphneProcess

# The speaker every body defaults to, so requests that name none act as the key's speaker.
FUZZ_SPEAKER = "agent"


@dataclass(frozen=True)
class FuzzServer:
    daphne: DaphneProcess
    api_key: str  # a moderator key speaking as FUZZ_SPEAKER
    env: dict[str, str | None]

    @property
    def url(self) -> str:
        return self.daphne.url

    @property
    def ws_url(self) -> str:
        return self.daphne.ws_url


def _manage(env: Mapping[str, str | None], *args: str) -> str:
    merged = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=PROJECT_ROOT,
        env=merged,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


@contextlib.contextmanager
def running_server(
    *,
    require_auth: bool = True,
    extra_env: Mapping[str, str | None] | None = None,
    database_url: str | None = None,
    redis_url: str | None = None,
) -> Iterator[FuzzServer]:
    """A migrated, empty Parley in one daphne process on this leg's database, stopped (and
    its database dropped) on exit. The leg's servers are $DATABASE_URL and $REDIS_URL unless
    given (bench/fuzz.py picks them per leg)."""
    if database_url is None:
        database_url = os.environ.get("DATABASE_URL", "")
    if redis_url is None:
        redis_url = os.environ.get("REDIS_URL", "")
    name = f"parley_fuzz_{secrets.token_hex(4)}"
    with tempfile.TemporaryDirectory(prefix="parley-fuzz-") as var_dir:
        env: dict[str, str | None] = {
            "DJANGO_SETTINGS_MODULE": "config.settings.test",
            "PARLEY_VAR_DIR": var_dir,
            "DATABASE_URL": None,
            "REDIS_URL": redis_url or None,
            "PARLEY_CHANNEL_PREFIX": name,
            "PARLEY_REQUIRE_AUTH": "1" if require_auth else "0",
            "PARLEY_SWEEP_INTERVAL_S": "0.2",
            # Long text jobs synthesize in the background: the fuzz creates dozens, and at the
            # default 100,000 characters they took the CPU the run itself needs.
            "PARLEY_TTS_LONG_MAX_CHARS": "4096",
            **(extra_env or {}),
        }
        server_url = ""
        if database_url.startswith(("postgres://", "postgresql://")):
            import psycopg

            server_url = database_url
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            env["DATABASE_URL"] = urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))
        try:
            _manage(env, "migrate", "--noinput", "-v0")
            api_key = _manage(env, "create_api_key", FUZZ_SPEAKER, "--moderator")
            # the server as bin/serve runs it (config/server.py), timeouts and body caps included
            daphne = DaphneProcess(env=env, server=PARLEY_SERVER, name="parley-fuzz")
            try:
                yield FuzzServer(daphne=daphne, api_key=api_key, env=env)
            finally:
                daphne.stop()
        finally:
            if server_url:
                import psycopg

                with psycopg.connect(server_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
