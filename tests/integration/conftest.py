"""A real deployment in miniature: PostgreSQL, Redis, daphne workers, a scheduler process."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.support.servers import (
    PROJECT_ROOT,
    DaphneProcess,
    ManagedProcess,
    postgres_url,
    redis_url,
)


@dataclass
class Deployment:
    database_url: str
    redis_url: str
    env: dict[str, str]
    workers: list[DaphneProcess] = field(default_factory=list)

    def start_worker(self, **extra_env: str) -> DaphneProcess:
        worker = DaphneProcess(env={**self.env, **extra_env})
        self.workers.append(worker)
        return worker

    def start_scheduler(self) -> ManagedProcess:
        process = ManagedProcess(
            [sys.executable, "manage.py", "run_scheduler", "--interval", "0.2"],
            env=self.env,
            name="run_scheduler",
            ready_log="scheduler running",
        )
        self.workers.append(process)  # type: ignore[arg-type]
        return process

    def query(self, sql: str, *params) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            return conn.execute(sql, params).fetchall()


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture
def deployment() -> Iterator[Deployment]:
    """A fresh database on the shared PostgreSQL, migrated, plus the shared Redis."""
    server_url = postgres_url()
    name = f"parley_it_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = _with_database(server_url, name)
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url(),
        "PARLEY_SWEEP_INTERVAL_S": "0.2",
        "PARLEY_CHANNEL_PREFIX": name,
    }
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
        cwd=PROJECT_ROOT,
        env={**__import__("os").environ, **env},
        check=True,
    )
    deployment = Deployment(database_url=database_url, redis_url=env["REDIS_URL"], env=env)
    try:
        yield deployment
    finally:
        for process in deployment.workers:
            process.stop()
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
