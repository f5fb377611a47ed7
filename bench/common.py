"""What every bench scenario shares: processes (servers pinned to a core), what the kernel
says about a server process (memory, threads, CPU time, database connections), the payload
every publisher sends, and percentiles.

Nothing here imports Django: the scenarios drive servers from outside, as a client would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from tests.processes import ROOT, free_port, stop_process, wait_for_port

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DEFAULT_REDIS_PREFIX",
    "DEFAULT_REDIS_URL",
    "PAYLOAD_BYTES",
    "ROOT",
    "ServerHandle",
    "bench_payload",
    "cpu_seconds",
    "db_connections",
    "ensure_database",
    "free_port",
    "percentile",
    "pinned",
    "proc_status",
    "start_server",
    "stop_process",
    "wait_for_port",
]

# The services every target shares unless the environment names others.
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/notify_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_REDIS_PREFIX = "notify-bench"

# Size of the encoded payload, the same for every target: big enough to be a realistic
# notification, small enough that 10k streams x 10 events/s stays within loopback's reach.
PAYLOAD_BYTES = 200
_PAYLOAD_OVERHEAD = len(json.dumps({"n": 0, "pad": "", "t": time.time()}))


def bench_payload(n: int) -> dict[str, Any]:
    """Event ``n`` of a run: ``{"t": <time.time() now>, "n": n, "pad": "xxx…"}``, about
    ``PAYLOAD_BYTES`` bytes as JSON. The load generator reads ``"t": <float>`` from each
    event's data line to compute the latency, whatever envelope the target wraps it in."""
    pad = max(0, PAYLOAD_BYTES - _PAYLOAD_OVERHEAD - len(str(n)) + 1)
    return {"t": time.time(), "n": n, "pad": "x" * pad}


def pinned(command: Sequence[str], core: int | None) -> list[str]:
    """``command`` run on CPU ``core`` only (``taskset``); unchanged for ``None`` or when
    ``taskset`` is missing. taskset execs the command: the process id stays the command's."""
    if core is None or shutil.which("taskset") is None:
        return list(command)
    return ["taskset", "-c", str(core), *command]


def proc_status(pid: int) -> tuple[int, int]:
    """(resident memory in KiB, threads) of a process."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["Threads"])


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far, from /proc/<pid>/stat; its
    resolution is one clock tick (10 ms), so measure over at least a few seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces: count fields after its closing paren.
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _CLOCK_TICKS


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed since it was listed
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _tcp_peers(pid: int) -> list[tuple[int, int]]:
    """(local port, remote port) of the established TCP connections of a process."""
    inodes = _socket_inodes(pid)
    peers = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            columns = line.split()
            # local_address rem_address st ... inode: ports are hex; st 01 is ESTABLISHED.
            if columns[3] == "01" and columns[9] in inodes:
                local = int(columns[1].rsplit(":", 1)[1], 16)
                remote = int(columns[2].rsplit(":", 1)[1], 16)
                peers.append((local, remote))
    return peers


def db_connections(pid: int, database: str) -> int:
    """Database connections a server process holds now.

    ``database`` is a PostgreSQL URL or the path of an SQLite file. For PostgreSQL, the
    process's established TCP connections to the server's port (read from /proc, so no
    query can be mistaken for the server's own); for SQLite, its open descriptors on the
    file."""
    if "://" not in database:
        count = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                count += os.readlink(fd) == database
            except OSError:
                pass
        return count
    port = urlsplit(database).port or 5432
    return sum(remote == port for _, remote in _tcp_peers(pid))


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database of ``url`` unless it exists."""
    import psycopg  # only the orchestrator needs it, not the scenario modules' importers

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl().replace("postgres://", "postgresql://", 1)
    with psycopg.connect(admin, autocommit=True) as connection:
        exists = connection.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
        ).fetchone()
        if not exists:
            connection.execute(f'CREATE DATABASE "{name}"')


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0 to 100) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class ServerHandle:
    """An ASGI server process started by ``start_server``."""

    kind: str
    port: int
    process: subprocess.Popen[bytes]
    log: IO[bytes] = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str = "/", scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()
        os.unlink(self.log.name)


def server_command(
    kind: str, app: str, port: int, backlog: int | None, python: str = sys.executable
) -> list[str]:
    """The command line that serves ASGI ``app`` with ``kind`` (daphne or uvicorn) on
    127.0.0.1:``port``. ``backlog`` None keeps the server's default listen backlog
    (daphne: Twisted's 50; uvicorn: 2048)."""
    if kind == "daphne":
        # daphne's -b/-p cannot set the backlog; a Twisted endpoint string can.
        endpoint = f"tcp:port={port}:interface=127.0.0.1"
        if backlog is not None:
            endpoint += f":backlog={backlog}"
        return [python, "-m", "daphne", "-e", endpoint, app]
    if kind == "uvicorn":
        command = [python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)]
        command += ["--no-access-log", "--lifespan", "off", "--log-level", "warning"]
        if backlog is not None:
            command += ["--backlog", str(backlog)]
        return [*command, app]
    raise ValueError(f"unknown server {kind!r}; use daphne or uvicorn")


def start_server(
    kind: str,
    app: str,
    env: Mapping[str, str],
    port: int | None = None,
    core: int | None = 0,
    backlog: int | None = None,
    python: str = sys.executable,
    cwd: Path = ROOT,
) -> ServerHandle:
    """Start ``kind`` serving ``app`` pinned to ``core``, and wait until it listens.
    Its output goes to a temporary file (``handle.output()``), shown if it fails to start."""
    port = free_port() if port is None else port
    command = pinned(server_command(kind, app, port, backlog, python), core)
    log = tempfile.NamedTemporaryFile(prefix=f"bench-{kind}-", suffix=".log", delete=False)
    process = subprocess.Popen(
        command, cwd=cwd, env=dict(env), stdout=log, stderr=subprocess.STDOUT
    )
    handle = ServerHandle(kind, port, process, log)
    try:
        wait_for_port(port, timeout=30, process=process)
    except Exception as exc:
        output = handle.output()
        handle.stop()
        raise RuntimeError(f"{kind} serving {app} did not start ({exc}):\n{output}") from None
    return handle
