"""Private PostgreSQL clusters, for the tests and the bench: a primary, and streaming standbys
of it. No pytest and no Django settings here (as in ``tests.processes``), so that the bench
(``bench.postgres``) starts its cluster with the same code.

    with private_cluster() as primary:
        primary.url("notify")             # postgres://postgres@127.0.0.1:<port>/notify
        with primary.standby(recovery_min_apply_delay="2s") as replica:
            ...                           # a hot standby, applying each commit 2 s late

A cluster is initialised into a temporary directory and listens on 127.0.0.1 on a free port
(trust authentication: nothing else listens there), with its Unix socket in its directory;
no shared server's configuration is touched. PostgreSQL refuses to run as root, so as root
initdb, pg_basebackup and postgres run as the ``postgres`` OS user (``setpriv``), in a
directory it owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO

from tests.processes import free_port

# Debian's PostgreSQL 15 (postgresql-15).
PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"  # the cluster's superuser, and the OS user it runs as under root
START_TIMEOUT = 60.0
# SIGINT is PostgreSQL's fast shutdown (pg_ctl stop -m fast): clients are disconnected,
# then a shutdown checkpoint; SIGQUIT, immediate shutdown, if that takes too long.
STOP_TIMEOUT = 30.0


class ClusterError(RuntimeError):
    """A private cluster could not be set up or started."""


def missing_binaries(bin_dir: Path = PG_BIN) -> list[Path]:
    """The PostgreSQL programs a private cluster and its standbys need that are not there."""
    return [
        bin_dir / name
        for name in ("initdb", "pg_basebackup", "postgres")
        if not (bin_dir / name).exists()
    ]


class PrivateCluster:
    """A PostgreSQL cluster in a temporary directory, from ``start()`` to ``stop()``.
    ``settings`` are passed to the server (``-c name=value``)."""

    def __init__(
        self,
        max_connections: int = 100,
        bin_dir: Path = PG_BIN,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.max_connections = max_connections
        self.bin_dir = bin_dir
        self.settings = dict(settings or {})
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
        self._set_up(self._initdb)

    def start_standby_of(self, primary: PrivateCluster) -> None:
        """Copy ``primary`` with ``pg_basebackup -R`` (which makes the copy a standby that
        streams from it), start it and wait until it accepts read-only connections."""

        def base_backup() -> None:
            self._run(
                "pg_basebackup",
                "--pgdata",
                str(self.data),
                "--host",
                "127.0.0.1",
                "--port",
                str(primary.port),
                "--username",
                SUPERUSER,
                "--write-recovery-conf",  # standby.signal, and primary_conninfo
                "--wal-method",
                "stream",
                "--checkpoint",
                "fast",  # at once, not spread over the primary's checkpoint interval
                "--no-sync",
            )

        self._set_up(base_backup)

    def _set_up(self, make_data: Callable[[], None]) -> None:
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise ClusterError(
                f"{', '.join(map(str, missing))} missing: install postgresql-15, or give "
                "PostgreSQL's bin directory"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="notify-pg-"))
        try:
            _give_to_server_user(self.directory)
            make_data()
            self._start_server()
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        self._run(
            "initdb",
            "--pgdata",
            str(self.data),
            "--username",
            SUPERUSER,
            "--auth",
            "trust",  # its pg_hba.conf lets replication connections from 127.0.0.1 in too
            "--encoding",
            "UTF8",
            "--locale",
            "C",
            "--no-sync",  # a throwaway cluster: no need to wait for the disk
            "--no-instructions",
        )

    def _run(self, program: str, *args: str) -> None:
        done = subprocess.run(
            _as_server_user([str(self.bin_dir / program), *args]),
            cwd=self.directory,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace")
            raise ClusterError(f"{program} failed ({done.returncode}):\n{output}")

    def _start_server(self) -> None:
        assert self.directory is not None
        self.port = free_port()
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "max_connections": str(self.max_connections),
            **self.settings,
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
    def standby(self, **settings: str) -> Iterator[PrivateCluster]:
        """A started streaming standby of this cluster (a hot standby: it answers reads),
        with ``settings`` (such as ``recovery_min_apply_delay="2s"``), stopped and removed on
        leaving."""
        replica = PrivateCluster(self.max_connections, self.bin_dir, settings)
        replica.start_standby_of(self)
        try:
            yield replica
        finally:
            replica.stop()


@contextmanager
def private_cluster(max_connections: int = 100, bin_dir: Path = PG_BIN) -> Iterator[PrivateCluster]:
    """A started ``PrivateCluster``, stopped and removed on leaving, however that happens."""
    cluster = PrivateCluster(max_connections, bin_dir)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _server_user() -> pwd.struct_passwd | None:
    """The OS user postgres must run as: ``postgres`` when we are root, else None (us)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise ClusterError(
            f"PostgreSQL refuses to run as root and there is no {SUPERUSER!r} OS user to run "
            "it as; create one, or run as another user"
        ) from None


def _give_to_server_user(directory: Path) -> None:
    user = _server_user()
    if user is not None:
        os.chown(directory, user.pw_uid, user.pw_gid)


def _as_server_user(command: Sequence[str], parent_death_signal: str | None = None) -> list[str]:
    """``command`` run as the server's OS user. ``parent_death_signal``: the signal the
    process gets if its parent dies without stopping it (so no cluster outlives a killed
    bench or test run). ``setpriv`` execs the command: the process id stays the command's."""
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
