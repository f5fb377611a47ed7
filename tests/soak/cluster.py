"""The soak's processes: a database of its own, Redis, daphne servers and publishers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.processes import ROOT, RedisServer, Server

PREFIX = f"notify-soak-{os.getpid()}"


class Database:
    """A database created for one run and dropped after it: a PostgreSQL database on the
    server of ``url``, or a SQLite file when ``url`` is None."""

    def __init__(self, url: str | None) -> None:
        self.url = url
        if url is None:
            self.name = os.path.join(tempfile.mkdtemp(prefix="notify-soak-"), "soak.sqlite3")
        else:
            self.name = f"notify_soak_{os.getpid()}"

    def create(self) -> None:
        if self.url is not None:
            self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        if self.url is None:
            Path(self.name).unlink(missing_ok=True)
        else:
            self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def _admin(self, sql: str) -> None:
        import dj_database_url
        import psycopg

        params = dj_database_url.parse(self.url or "")
        with psycopg.connect(
            host=params["HOST"] or None,
            port=params["PORT"] or None,
            user=params["USER"] or None,
            password=params["PASSWORD"] or None,
            dbname=params["NAME"],
            autocommit=True,
        ) as connection:
            connection.execute(sql)  # type: ignore[arg-type]


class Cluster:
    def __init__(self, database: Database, redis: RedisServer, notify: dict[str, Any]) -> None:
        self.database = database
        self.redis = redis
        self.notify = notify
        self.servers: list[Server] = []
        #: Every server process started, restarts included (their logs are checked).
        self.started: list[Server] = []

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY_TEST_")}
        env.pop("DATABASE_URL", None)
        if self.database.url is not None:
            env["DATABASE_URL"] = self.database.url
        env.update(
            DJANGO_SETTINGS_MODULE="tests.settings",
            NOTIFY_TEST_DB_NAME=self.database.name,
            NOTIFY_TEST_REDIS_PREFIX=PREFIX,
            NOTIFY_TEST_SETTINGS=json.dumps(self.notify),
            REDIS_URL=self.redis.url,
            PYTHONUNBUFFERED="1",
        )
        return env

    def configure_django(self) -> None:
        """Point this process's Django at the soak's database (to read it at the end)."""
        os.environ.update(self.env())
        import django

        django.setup()

    def migrate(self) -> None:
        subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), "migrate", "--noinput"],
            cwd=ROOT,
            env=self.env(),
            check=True,
            capture_output=True,
        )

    def start_server(self, port: int | None = None) -> Server:
        server = Server(self.env(), port=port)
        self.started.append(server)
        return server

    def restart(self, index: int) -> float:
        """Start server ``index`` again on its port; returns how long that took."""
        started = time.monotonic()
        self.servers[index] = self.start_server(self.servers[index].port)
        return time.monotonic() - started

    def start_publisher(
        self,
        seed: int,
        rate: float,
        duration: float,
        bursts: list[float],
        burst_size: int,
        channels: list[str],
    ) -> subprocess.Popen[str]:
        log = tempfile.NamedTemporaryFile(
            prefix=f"notify-soak-publisher-{seed}-", suffix=".log", delete=False
        )
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.soak.publisher",
                str(seed),
                str(rate),
                str(duration),
                ",".join(f"{at:.2f}" for at in bursts) or "-",
                str(burst_size),
                *channels,
            ],
            cwd=ROOT,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

    def tracebacks(self) -> list[str]:
        """Server logs that hold a traceback."""
        return [server.log.name for server in self.started if "Traceback" in server.output()]

    def stop(self) -> None:
        for server in self.started:
            server.stop()
