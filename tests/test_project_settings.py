"""The demo project's settings (project/settings.py), loaded in real subprocesses: they run in
DEBUG with a development key by default, and refuse to start without DEBUG unless given a
secret key of their own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from websockets.exceptions import InvalidStatus

from tests.conftest import ROOT, free_port, stop_process, wait_for_port
from tests.ws_client import WSClient

SHOW = (
    "import django; django.setup(); from django.conf import settings as s; "
    "print(s.DEBUG, s.SECRET_KEY, s.SESSION_COOKIE_SECURE, s.NOTIFY['PUBLISH_TOKENS'])"
)
A_KEY = "k" * 50


def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "NOTIFY_")) and key != "DATABASE_URL"
    }
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env={**base, "DJANGO_SETTINGS_MODULE": "project.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_development_defaults():
    result = run("-c", SHOW)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "notify-demo-insecure-key", "False", "[]"]


@pytest.mark.parametrize("key", [None, "", "notify-demo-insecure-key"])
def test_refuses_to_start_without_debug_and_a_secret_key(key):
    env = {"DJANGO_DEBUG": "0"}
    if key is not None:
        env["DJANGO_SECRET_KEY"] = key
    result = run("manage.py", "check", **env)
    assert result.returncode != 0
    assert "ImproperlyConfigured: DEBUG is off and DJANGO_SECRET_KEY is" in result.stderr
    assert "set DJANGO_SECRET_KEY to a secret of your own" in result.stderr


def test_starts_without_debug_given_a_secret_key():
    result = run("-c", SHOW, DJANGO_DEBUG="0", DJANGO_SECRET_KEY=A_KEY, NOTIFY_PUBLISH_TOKENS="a b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", A_KEY, "True", "['a',", "'b']"]
    check = run("manage.py", "check", DJANGO_DEBUG="false", DJANGO_SECRET_KEY=A_KEY)
    assert check.returncode == 0, check.stderr


def test_a_debug_value_that_is_neither_on_nor_off_is_refused():
    result = run("-c", SHOW, DJANGO_DEBUG="maybe")
    assert result.returncode != 0
    assert "DJANGO_DEBUG='maybe' is neither on nor off" in result.stderr


def test_postgresql_gets_a_connection_pool():
    show = "import django; django.setup(); from django.db import connection as c; "
    show += "print(c.settings_dict['OPTIONS'])"
    result = run("-c", show, DATABASE_URL="postgres://notify@/notify")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'pool': {'min_size': 2, 'max_size': 8}}"
    result = run("-c", show)
    assert "pool" not in result.stdout


def test_the_demo_serves_the_stream_over_a_websocket_behind_its_origin_check(tmp_path):
    """project/asgi.py as `make run` serves it: Channels routes the WebSocket to notify's
    consumer behind the origin check, with the session's user (AuthMiddlewareStack)."""
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'demo.sqlite3'}"}
    assert run("manage.py", "migrate", "--noinput", **env).returncode == 0
    base = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "NOTIFY_"))}
    port = free_port()
    with (tmp_path / "daphne.log").open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-p", str(port), "project.asgi:application"],
            cwd=ROOT,
            env={**base, "DJANGO_SETTINGS_MODULE": "project.settings", **env, "REDIS_URL": ""},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process=process)
        url = f"ws://127.0.0.1:{port}/notify/ws/?channel=broadcast"
        with pytest.raises(InvalidStatus):
            WSClient(url, origin="https://elsewhere.example.com")
        with WSClient(url, origin=f"http://localhost:{port}") as ws:
            assert ws.next()["type"] == "notify.retry"
            assert ws.next()["type"] == "notify.open"
            sent = run("manage.py", "send_event", "broadcast", '{"hi": 1}', **env)
            assert sent.returncode == 0, sent.stderr
            event = ws.next()
        assert (event["channel"], event["data"]) == ("broadcast", {"hi": 1})
    finally:
        stop_process(process)
    output = (tmp_path / "daphne.log").read_text()
    assert "Traceback" not in output, output
