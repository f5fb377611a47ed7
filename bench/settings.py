"""Settings of the notify bench targets: a production-like project around notify.

DEBUG off; PostgreSQL from ``DATABASE_URL``; Redis from ``REDIS_URL``, with the pub/sub
prefix ``BENCH_REDIS_PREFIX`` so a bench run never hears another project on the same Redis.
notify's defaults otherwise (the default AUTHORIZE policy, which opens ``public:*`` to
everyone), except the limits a load test cannot live with: every bench client connects
from 127.0.0.1 (no per-address or per-user stream limit), and streams last for the whole
run (no ``MAX_STREAM_SECONDS``).

    DJANGO_SETTINGS_MODULE=bench.settings .venv/bin/python manage.py migrate
"""

import os

import dj_database_url

SECRET_KEY = "notify-bench-not-secret"  # nothing here is worth protecting
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "notify",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "bench.urls"
ASGI_APPLICATION = "bench.asgi.application"
# notify's dashboard renders a template; nothing else here does.
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
STATIC_URL = "/static/"

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/notify_bench")
    )
}
# As the README recommends for PostgreSQL under ASGI: psycopg's connection pool, so that
# opening or resuming a stream borrows a connection instead of opening one (Django's docs
# rule out CONN_MAX_AGE under ASGI). The event loop's thread pool, where notify's queries
# run, has min(32, cores + 4) threads: max_size covers them.
DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 2, "max_size": 8}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

NOTIFY = {
    "REDIS_URL": os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    "REDIS_PREFIX": os.environ.get("BENCH_REDIS_PREFIX", "notify-bench"),
    "MAX_STREAMS_PER_IP": None,
    "MAX_STREAMS_PER_USER": None,
    "MAX_STREAM_SECONDS": None,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"notify": {"handlers": ["console"], "level": "WARNING"}},
}
