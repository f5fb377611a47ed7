"""A private PostgreSQL cluster for the bench: ``python -m bench.run`` starts one, and runs
every target on it, unless ``DATABASE_URL`` names a server to use instead.

Why: django-eventstream, the peer the bench measures, holds a thread and a PostgreSQL
connection for every open stream, so the issue's 1,000 clients need 1,000 connections: far
past a default server's ``max_connections`` (100), where it delivers nothing. notify holds a
pool of 2 to 8 whatever its streams. The cluster is initialised into a temporary directory
with ``max_connections=1200`` (1,000 eventstream streams, its publisher, and room for the
rest) and every other setting at its default; no shared server's configuration is touched.

    with private_cluster() as cluster:
        cluster.url("notify_bench")     # postgres://postgres@127.0.0.1:<port>/notify_bench

It listens on 127.0.0.1 on a free port (trust authentication: nothing else listens there)
and puts its Unix socket in its directory. PostgreSQL refuses to run as root, so as root
initdb and postgres run as the ``postgres`` OS user (``setpriv``), in a directory it owns.

    python -m bench.postgres            # start one, print its URL, stop it on Ctrl-C
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import urlsplit

from tests.processes import free_port

# Debian's PostgreSQL 15 (postgresql-15); BENCH_PG_BIN names another bin directory.
PG_BIN = Path(os.environ.get("BENCH_PG_BIN", "/usr/lib/postgresql/15/bin"))
MAX_CONNECTIONS = 1200
SUPERUSER = "postgres"  # the cluster's superuser, and the OS user it runs as under root
START_TIMEOUT = 60.0
# SIGINT is PostgreSQL's fast shutdown (pg_ctl stop -m fast): clients are disconnected,
# then a shutdown checkpoint; SIGQUIT, immediate shutdown, if that takes too long.
STOP_TIMEOUT = 30.0


class ClusterError(RuntimeError):
    """The private cluster could not be set up or started."""


class PrivateCluster:
    """A PostgreSQL cluster in a temporary directory, from ``start()`` to ``stop()``."""

    def __init__(self, max_connections: int = MAX_CONNECTIONS, bin_dir: Path = PG_BIN) -> None:
        self.max_connections = max_connections
        self.bin_dir = bin_dir
        self.port = 0
        self.directory: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def data(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "data"

    @property
    def log_path(self) -> Path:
        assert self.directory is not None, "not started"
        return self.directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgres://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """initdb into a new temporary directory, start postgres on a free port and wait until
        it accepts connections. On failure, everything started is stopped and removed."""
        for binary in ("initdb", "postgres"):
            if not (self.bin_dir / binary).exists():
                raise ClusterError(
                    f"{self.bin_dir / binary} is missing: install postgresql-15, set "
                    "BENCH_PG_BIN to PostgreSQL's bin directory, or set DATABASE_URL"
                )
        self.directory = Path(tempfile.mkdtemp(prefix="notify-bench-pg-"))
        try:
            _give_to_server_user(self.directory)
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        command = [
            str(self.bin_dir / "initdb"),
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",  # a throwaway cluster: no need to wait for the disk
            "--no-instructions",
        ]
        done = subprocess.run(
            _as_server_user(command),
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace")
            raise ClusterError(f"initdb failed ({done.returncode}):\n{output}")

    def _start_server(self) -> None:
        assert self.directory is not None
        self.port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "max_connections": str(self.max_connections),
        }
        command = [str(self.bin_dir / "postgres"), "-D", str(self.data)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        self._log = open(self.log_path, "wb")  # closed by stop()
        # A session of its own: the Ctrl-C that interrupts the bench reaches the servers and
        # clients, not the database they use; stop() shuts it down after them.
        self.process = subprocess.Popen(
            _as_server_user(command, parent_death_signal="INT"),
            cwd=self.directory,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        import psycopg  # the bench's orchestrator has it; the scenario modules need not

        assert self.process is not None
        conninfo = self.url().replace("postgres://", "postgresql://", 1)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise ClusterError(
                    f"postgres exited with {self.process.returncode} while starting "
                    f"(max_connections={self.max_connections}):\n{self.log()}"
                )
            try:
                with psycopg.connect(conninfo, connect_timeout=2):
                    return
            except psycopg.OperationalError as exc:  # not listening yet, or starting up
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"postgres did not accept connections after {START_TIMEOUT:.0f} s "
                        f"({exc}):\n{self.log()}"
                    ) from None
                time.sleep(0.1)

    def log(self) -> str:
        """What postgres has written so far (its log goes to a file in the directory)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Fast shutdown, then remove the directory. Safe to call more than once."""
        if self.process is not None:
            _shut_down(self.process)
            self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None


@contextmanager
def private_cluster(max_connections: int = MAX_CONNECTIONS) -> Iterator[PrivateCluster]:
    """A started ``PrivateCluster``, stopped and removed on leaving, however that happens."""
    cluster = PrivateCluster(max_connections)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def describe(url: str) -> dict[str, Any]:
    """What a run records about its database: the URL without its password, the server's
    version and its ``max_connections``."""
    import psycopg

    parts = urlsplit(url)
    if parts.password is not None:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
        shown = parts._replace(netloc=netloc).geturl()
    else:
        shown = url
    conninfo = url.replace("postgres://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=10) as connection:
        row = connection.execute(
            "SELECT current_setting('max_connections'), current_setting('server_version')"
        ).fetchone()
    assert row is not None
    return {"url": shown, "max_connections": int(row[0]), "server_version": row[1]}


def _server_user() -> pwd.struct_passwd | None:
    """The OS user postgres must run as: ``postgres`` when we are root, else None (us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ClusterError(
            f"PostgreSQL refuses to run as root and there is no {SUPERUSER!r} OS user to run "
            "it as; create one, run the bench as another user, or set DATABASE_URL"
        ) from None


def _give_to_server_user(directory: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)


def _as_server_user(command: Sequence[str], parent_death_signal: str | None = None) -> list[str]:
    """``command`` run as the server's OS user. ``parent_death_signal``: the signal the
    process gets if the bench dies without stopping it (so no cluster outlives a killed
    bench). ``setpriv`` execs the command: the process id stays the command's."""
    user = _server_user()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        if user is None:
            return list(command)  # not root: run it as we are, without the death signal
        runuser = shutil.which("runuser")
        if runuser is None:
            raise ClusterError("running PostgreSQL as root needs setpriv or runuser (util-linux)")
        return [runuser, "-u", user.pw_name, "--", *command]
    wrapper = [setpriv]
    if user is not None:
        wrapper += [f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    if parent_death_signal is not None:
        # After the user change, which would clear it.
        wrapper += [f"--pdeathsig={parent_death_signal}"]
    return [*wrapper, "--", *command]


def _shut_down(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 10.0)):
        if process.poll() is not None:
            return
        with suppress(ProcessLookupError):
            process.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            process.wait(wait)
    if process.poll() is None:
        process.kill()
        process.wait()


def exit_on_sigterm() -> None:
    """Make SIGTERM raise SystemExit, so that a terminated process still stops and removes
    its cluster (by default SIGTERM ends Python at once, without ``finally``; postgres
    would still get its parent-death signal, but the directory would stay)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main() -> None:
    exit_on_sigterm()
    with private_cluster() as cluster:
        print(f"DATABASE_URL={cluster.url('notify_bench')}", flush=True)
        print(f"(data in {cluster.directory}; Ctrl-C stops it and removes it)", file=sys.stderr)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
