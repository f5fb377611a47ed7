"""What the scenarios measure: a server serving streams, and how to publish to it.

A ``Target`` says how to start its server (``start``: an ASGI app on daphne or uvicorn,
pinned to a core, with an optional listen backlog), where its stream is, and how to publish
the bench payload to it (``publisher``: a command taking ``--rate R --count N`` that
publishes N events at R per second and prints a JSON summary as its last line).

    notify-daphne, notify-uvicorn   notify (bench.settings, bench.asgi) on PostgreSQL + Redis,
                                    its SSE stream
    notify-daphne-ws, ...-uvicorn-ws  the same server and application, the same channel,
                                    read over notify's WebSocket stream (/notify/ws/)
    bare-daphne, bare-uvicorn       bench.bare_asgi: no Django, no database, the same Redis
    eventstream-daphne              django-eventstream 5.x (bench/eventstream/), in .bench-venv

uvicorn serves WebSockets with the ``websockets`` package (``--ws auto``: in uvicorn 0.54,
its sans-I/O protocol); daphne with autobahn, on Twisted.

The services come from the environment when a target is built: ``DATABASE_URL`` (default
postgres://postgres@127.0.0.1:5432/notify_bench; ``bench.run`` sets it to the private
cluster it starts, ``bench.postgres``, unless it is set), ``REDIS_URL``
(redis://127.0.0.1:6379/0) and ``BENCH_REDIS_PREFIX`` (notify-bench), the prefix of every
Redis channel a target uses.

Publishers run pinned to core 1, beside the load generator, so that core 0 is the server's
alone: at 10 events/s a publisher costs little, and a server sharing its core with a
publisher would have its CPU per delivery and its latency inflated by it. Redis and
PostgreSQL are not pinned (the kernel places them).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.common import (
    DEFAULT_DATABASE_URL,
    DEFAULT_REDIS_PREFIX,
    DEFAULT_REDIS_URL,
    ROOT,
    ServerHandle,
    pinned,
    start_server,
)

SERVER_CORE = 0
CLIENT_CORE = 1  # the load generator's and the publishers'
SERVERS = ("daphne", "uvicorn")


@dataclass(frozen=True)
class Target:
    """One server setup under test. ``env`` is added to this process's environment for the
    server, the publisher and ``prepare_command``; commands run in ``cwd``."""

    name: str
    server: str  # "daphne" or "uvicorn"
    app: str  # the ASGI application, "module:attribute"
    stream_path: str  # path and query of one stream
    publisher_command: tuple[str, ...]  # accepts --rate R --count N
    env: Mapping[str, str] = field(default_factory=dict)
    python: str = sys.executable
    cwd: Path = ROOT
    # The database whose connections the server may hold (a URL, or an SQLite file's
    # path); None: the target has none.
    database: str | None = None
    # Run once before the server starts (migrations); None: nothing to prepare.
    prepare_command: tuple[str, ...] | None = None
    # "http" for an SSE stream, "ws" for a WebSocket one: the stream URL's scheme, which
    # sets the load generator's mode.
    scheme: str = "http"

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    def prepare(self) -> None:
        if self.prepare_command is not None:
            subprocess.run(self.prepare_command, cwd=self.cwd, env=self.environment(), check=True)

    def start(
        self, backlog: int | None = 4096, core: int | None = SERVER_CORE, port: int | None = None
    ) -> ServerHandle:
        """Start the server and wait until it listens. ``backlog`` None keeps the server's
        default listen backlog (daphne: 50, uvicorn: 2048)."""
        return start_server(
            self.server,
            self.app,
            self.environment(),
            port=port,
            core=core,
            backlog=backlog,
            python=self.python,
            cwd=self.cwd,
        )

    def stream_url(self, server: ServerHandle) -> str:
        return server.url(self.stream_path, self.scheme)

    def publisher(self, rate: float, count: int, core: int | None = CLIENT_CORE) -> list[str]:
        """The command that publishes ``count`` events at ``rate`` per second."""
        command = [*self.publisher_command, "--rate", str(rate), "--count", str(count)]
        return pinned(command, core)

    def start_publisher(
        self, rate: float, count: int, core: int | None = CLIENT_CORE
    ) -> subprocess.Popen[str]:
        """Start ``publisher``; its stdout is a pipe (the JSON summary is its last line)."""
        return subprocess.Popen(
            self.publisher(rate, count, core),
            cwd=self.cwd,
            env=self.environment(),
            stdout=subprocess.PIPE,
            text=True,
        )


def services() -> dict[str, str]:
    """The database, Redis and prefix every target of this run uses, from the environment."""
    return {
        "DATABASE_URL": os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        "REDIS_URL": os.environ.get("REDIS_URL", DEFAULT_REDIS_URL),
        "BENCH_REDIS_PREFIX": os.environ.get("BENCH_REDIS_PREFIX", DEFAULT_REDIS_PREFIX),
    }


def notify_target(server: str) -> Target:
    env = {**services(), "DJANGO_SETTINGS_MODULE": "bench.settings"}
    return Target(
        name=f"notify-{server}",
        server=server,
        app="bench.asgi:application",
        stream_path="/notify/stream/?channel=public:bench",
        publisher_command=(sys.executable, "-m", "bench.publisher", "notify"),
        env=env,
        database=env["DATABASE_URL"],
        prepare_command=(sys.executable, "manage.py", "migrate", "-v0"),
    )


def notify_websocket_target(server: str) -> Target:
    """notify's target read over its WebSocket stream: the same server command, application,
    channel and publisher as ``notify_target``'s SSE stream."""
    sse = notify_target(server)
    return replace(
        sse,
        name=f"{sse.name}-ws",
        stream_path="/notify/ws/?channel=public:bench",
        scheme="ws",
    )


def bare_target(server: str) -> Target:
    env = services()
    channel = f"{env['BENCH_REDIS_PREFIX']}:bare"
    return Target(
        name=f"bare-{server}",
        server=server,
        app="bench.bare_asgi:app",
        stream_path="/stream",
        publisher_command=(sys.executable, "-m", "bench.publisher", "bare", "--channel", channel),
        env={**env, "BARE_CHANNEL": channel},
    )


def eventstream_target() -> Target | None:
    """django-eventstream's target (helper module ``bench.eventstream.target``), or None
    with a message on stderr when it or its environment (``.bench-venv``) is missing."""
    try:
        module = importlib.import_module("bench.eventstream.target")
    except ModuleNotFoundError as exc:
        print(f"eventstream-daphne skipped: {exc}", file=sys.stderr)
        return None
    # Built now, not at the module's import: the services are those of the environment now.
    target: Target = module.eventstream_target()
    if not Path(target.python).exists():
        print(
            f"eventstream-daphne skipped: {target.python} is missing (make bench creates it)",
            file=sys.stderr,
        )
        return None
    return target


def all_targets(include_eventstream: bool = True) -> dict[str, Target]:
    """Every target by name; eventstream's only when it can run here."""
    built = [
        *map(notify_target, SERVERS),
        *map(notify_websocket_target, SERVERS),
        *map(bare_target, SERVERS),
    ]
    targets = {target.name: target for target in built}
    if include_eventstream and (eventstream := eventstream_target()) is not None:
        targets[eventstream.name] = eventstream
    return targets


def get_target(name: str) -> Target:
    """The target called ``name``; SystemExit naming the known ones otherwise."""
    targets = all_targets(include_eventstream=name.startswith("eventstream"))
    if name not in targets:
        raise SystemExit(f"unknown or unavailable target {name!r}; known: {', '.join(targets)}")
    return targets[name]


#: What the idle and latency scenarios measure unless told otherwise: notify over both
#: transports on both servers, and the bare app on both (django-eventstream runs apart).
STREAM_TARGETS = (
    "notify-daphne",
    "notify-daphne-ws",
    "notify-uvicorn",
    "notify-uvicorn-ws",
    "bare-daphne",
    "bare-uvicorn",
)
