"""Settings of the test suite: a minimal project set up the way the README tells users to.

The environment chooses the services: ``DATABASE_URL`` switches to PostgreSQL (else a
SQLite file, so that server processes started by the tests share it); ``REDIS_URL`` is
filled in by tests/conftest.py (a private redis-server when none is given).
``NOTIFY_TEST_DB_NAME`` and ``NOTIFY_TEST_*`` are set by the tests for the servers they start;
``NOTIFY_TEST_REPLICA_URL`` adds a database ``replica`` that every read is routed to
(tests/test_replica.py).
"""

import json
import os
import tempfile
from pathlib import Path

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "notify-tests"
DEBUG = False
# The WebSocket origin check reads it: tests/test_websocket.py narrows it for a server.
ALLOWED_HOSTS = json.loads(os.environ.get("NOTIFY_TEST_ALLOWED_HOSTS", '["*"]'))
# A site served under a prefix: tests/test_asgi.py sets it for a server.
FORCE_SCRIPT_NAME = os.environ.get("NOTIFY_TEST_FORCE_SCRIPT_NAME") or None
USE_TZ = True
TIME_ZONE = "UTC"

# --- as in the README: "Adding notify to an existing project" -------------------------
INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "notify",
]
ROOT_URLCONF = "tests.urls"
ASGI_APPLICATION = "tests.asgi.application"
NOTIFY = {
    "REDIS_URL": os.environ.get("REDIS_URL") or None,
    # Servers started by the tests get their own prefix so runs never hear each other.
    "REDIS_PREFIX": os.environ.get("NOTIFY_TEST_REDIS_PREFIX", "notify-tests"),
    # Pruning after publish is switched off so that tests which back-date events decide
    # when they go; tests/test_retention.py switches it on.
    "RETENTION": {"max_age": None, "max_events": None},
    # The tests use channels of any name, which the default policy refuses (it opens only
    # broadcast, public:*, user:<pk>, group:<name> and staff:*): everything is readable
    # here, and tests/test_authorization.py tests the default policy.
    "AUTHORIZE": "notify.authorization.allow_all",
    # Every test client connects from 127.0.0.1, and a stopped server's counts stay in Redis
    # for a few seconds: no stream limits here; tests/test_limits.py sets its own.
    "MAX_STREAMS_PER_USER": None,
    "MAX_STREAMS_PER_IP": None,
    **json.loads(os.environ.get("NOTIFY_TEST_SETTINGS", "{}")),
}
# ---------------------------------------------------------------------------------------

MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# One file per test run, so that runs side by side don't share a database.
_SQLITE_FILE = os.path.join(tempfile.gettempdir(), f"notify-tests-{os.getpid()}.sqlite3")
if os.environ.get("DATABASE_URL"):
    DATABASES = {"default": dj_database_url.parse(os.environ["DATABASE_URL"])}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": _SQLITE_FILE,
            # A file, not memory: daphne processes started by the tests read it too.
            "TEST": {"NAME": _SQLITE_FILE},
            "OPTIONS": {
                "init_command": "PRAGMA journal_mode=WAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }
# A server process started by a test uses the test database pytest-django created.
if os.environ.get("NOTIFY_TEST_DB_NAME"):
    DATABASES["default"]["NAME"] = os.environ["NOTIFY_TEST_DB_NAME"]
# A read replica, as projects set one up: reads go there, writes to the primary.
if os.environ.get("NOTIFY_TEST_REPLICA_URL"):
    DATABASES["replica"] = dj_database_url.parse(os.environ["NOTIFY_TEST_REPLICA_URL"])
    DATABASE_ROUTERS = ["tests.routers.ReplicaRouter"]

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# For {% static %} in notify's templates; tests/js_pages.py serves notify's static files there.
STATIC_URL = "/static/"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"notify": {"handlers": ["console"], "level": "WARNING"}},
}
