"""Settings of the django-eventstream bench project.

``DATABASE_URL`` (PostgreSQL, e.g. postgres://postgres@127.0.0.1:5432/notify_bench) and
``REDIS_URL`` (redis://127.0.0.1:6379/0) name the same services notify is measured on.

    DJANGO_SETTINGS_MODULE=bench.eventstream.settings .bench-venv/bin/python manage.py migrate
    .bench-venv/bin/python -m daphne -b 127.0.0.1 -p 8001 bench.eventstream.asgi:application
"""

import os
from typing import Any
from urllib.parse import unquote, urlsplit

import dj_database_url


def redis_connection(url: str) -> dict[str, Any]:
    """``redis.Redis(**...)`` keyword arguments for ``url``: django-eventstream takes its
    Redis as a dict of keywords (``EVENTSTREAM_REDIS``), not as a URL."""
    parts = urlsplit(url)
    if parts.scheme != "redis":
        raise ValueError(f"REDIS_URL={url!r} is not a redis:// URL; use redis://host:port/db")
    options: dict[str, Any] = {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 6379,
        "db": int(parts.path.lstrip("/") or 0),
    }
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    return options


# A benchmark project, never deployed: a fixed key is fine, DEBUG stays off (DEBUG keeps
# every query in memory, which would show up as RSS per stream).
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "bench-eventstream-not-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    # As django-eventstream's README says: daphne, then django_eventstream (its models hold
    # the stored events). auth and sessions: a real project has them, and the stream asks
    # for request.user to decide which channels the user may read.
    "daphne",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django_eventstream",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

ROOT_URLCONF = "bench.eventstream.urls"
ASGI_APPLICATION = "bench.eventstream.asgi.application"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notify_bench")
    )
}

# Fan-out between processes (the publisher is one): send_event publishes to Redis, and each
# server process's one subscription hands events to its open streams.
EVENTSTREAM_REDIS = redis_connection(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))

# Events are stored before they are published, so a client that reconnects with
# Last-Event-ID is replayed from the database, as notify's clients are.
EVENTSTREAM_STORAGE_CLASS = "django_eventstream.storage.DjangoModelStorage"

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
