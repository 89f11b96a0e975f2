"""A deployment in miniature whose every part can be killed: two daphne workers,
`run_scheduler`, and a PostgreSQL and a Redis of its own.

The servers are private on both CI legs (never the machine's 5432/6379, which other tests
share): a fault test kills and restarts them. They live for the session; each test gets a
fresh database (a copy of one migrated template) and its own channel prefix.
"""

from __future__ import annotations

import concurrent.futures
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg
import pytest

from tests.support.servers import (
    PARLEY_SERVER,
    PROJECT_ROOT,
    DaphneProcess,
    KillablePostgres,
    KillableRedis,
    ManagedProcess,
)

TEMPLATE_DB = "faults_template"


@dataclass
class FaultServers:
    postgres: KillablePostgres
    redis: KillableRedis

    def heal(self) -> None:
        """Bring back whatever a failed test left down."""
        if not self.redis.running:
            self.redis.restart()
        if not self.postgres.running:
            self.postgres.restart()


@dataclass
class Deployment:
    servers: FaultServers
    database_url: str
    env: dict[str, str]
    processes: list[ManagedProcess] = field(default_factory=list)

    @property
    def redis(self) -> KillableRedis:
        return self.servers.redis

    @property
    def postgres(self) -> KillablePostgres:
        return self.servers.postgres

    def start_worker(self, **extra_env: str) -> DaphneProcess:
        # The server entry point production runs (config/server.py), not bare daphne.
        worker = DaphneProcess(
            env={**self.env, **extra_env}, server=PARLEY_SERVER, startup_timeout=60
        )
        self.processes.append(worker)
        return worker

    def start_scheduler(self, *args: str, **extra_env: str) -> ManagedProcess:
        process = ManagedProcess(
            [sys.executable, "manage.py", "run_scheduler", *args],
            env={**self.env, **extra_env},
            name="run_scheduler",
            ready_log="scheduler running",
            startup_timeout=60,
        )
        self.processes.append(process)
        return process

    def start(self, workers: int = 2, *, scheduler: bool = True, **extra_env: str):
        """Start `workers` daphne processes (and run_scheduler) side by side: each takes
        seconds to import Django. Returns the workers."""
        with concurrent.futures.ThreadPoolExecutor(workers + 1) as pool:
            started = [pool.submit(self.start_worker, **extra_env) for _ in range(workers)]
            if scheduler:
                pool.submit(self.start_scheduler, **extra_env).result()
            return [future.result() for future in started]

    def query(self, sql: str, *params: object) -> list[tuple]:
        with psycopg.connect(self.database_url, autocommit=True, connect_timeout=5) as conn:
            return conn.execute(sql, params).fetchall()


def _admin(servers: FaultServers, sql: str) -> None:
    with psycopg.connect(servers.postgres.url_for("postgres"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(scope="session")
def fault_servers() -> Iterator[FaultServers]:
    """A private PostgreSQL (with a migrated template database) and a private Redis."""
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        postgres = pool.submit(KillablePostgres, dbname=TEMPLATE_DB)
        redis = pool.submit(KillableRedis)
        servers = FaultServers(postgres=postgres.result(), redis=redis.result())
    try:
        subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v0"],
            cwd=PROJECT_ROOT,
            env={
                **os.environ,
                "DJANGO_SETTINGS_MODULE": "config.settings.test",
                "DATABASE_URL": servers.postgres.url_for(TEMPLATE_DB),
            },
            check=True,
        )
        yield servers
    finally:
        servers.redis.stop()
        servers.postgres.stop()


@pytest.fixture
def deployment(fault_servers: FaultServers) -> Iterator[Deployment]:
    """A fresh copy of the migrated database, a channel prefix of its own; the processes
    are started by the test (`deployment.start()`)."""
    fault_servers.heal()
    name = f"faults_{secrets.token_hex(4)}"
    _admin(fault_servers, f'CREATE DATABASE "{name}" TEMPLATE "{TEMPLATE_DB}"')
    env = {
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": fault_servers.postgres.url_for(name),
        "REDIS_URL": fault_servers.redis.url,
        "PARLEY_CHANNEL_PREFIX": name,
    }
    deployment = Deployment(servers=fault_servers, database_url=env["DATABASE_URL"], env=env)
    try:
        yield deployment
    finally:
        for process in reversed(deployment.processes):
            process.stop(timeout=5)
        fault_servers.heal()
        _admin(fault_servers, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
