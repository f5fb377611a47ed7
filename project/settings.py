"""Settings of the notify demo project.

With no environment it runs on SQLite and notify's embedded broker, in DEBUG mode with a
development secret key. ``DATABASE_URL`` (e.g. postgres://postgres@127.0.0.1:5432/notify)
and ``REDIS_URL`` (redis://127.0.0.1:6379/0) switch to PostgreSQL (with psycopg's connection
pool) and Redis.

``DJANGO_DEBUG=0`` turns DEBUG off; the project then refuses to start unless
``DJANGO_SECRET_KEY`` holds a key of its own (see SECURITY.md), and sends its cookies over
HTTPS only. ``NOTIFY_PUBLISH_TOKENS`` (whitespace-separated) sets the publish API's tokens,
``NOTIFY_METRICS_TOKEN`` the metrics' bearer token, ``DJANGO_STATIC_ROOT`` the directory
``collectstatic`` fills.
"""

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

_DEVELOPMENT_SECRET_KEY = "notify-demo-insecure-key"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")

_debug = os.environ.get("DJANGO_DEBUG", "1").strip().lower()
if _debug not in _TRUE + _FALSE:
    raise ImproperlyConfigured(
        f"DJANGO_DEBUG={_debug!r} is neither on nor off; set it to 1 (development) or 0."
    )
DEBUG = _debug in _TRUE

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY and DEBUG:
    SECRET_KEY = _DEVELOPMENT_SECRET_KEY
elif SECRET_KEY in ("", _DEVELOPMENT_SECRET_KEY):
    raise ImproperlyConfigured(
        "DEBUG is off and DJANGO_SECRET_KEY is "
        + ("unset" if not SECRET_KEY else "the development key")
        + ": set DJANGO_SECRET_KEY to a secret of your own, e.g. the output of "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    # daphne first: it makes `manage.py runserver` serve ASGI.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "notify",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

_SQLITE = {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": BASE_DIR / "db.sqlite3",
    "OPTIONS": {
        # WAL lets the server read while `manage.py send_event` writes; IMMEDIATE takes the
        # write lock at BEGIN, so concurrent publishers queue instead of failing.
        "init_command": "PRAGMA journal_mode=WAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    },
}
DATABASES = {
    "default": dj_database_url.parse(os.environ["DATABASE_URL"])
    if os.environ.get("DATABASE_URL")
    else _SQLITE
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # psycopg's pool (README, "How delivery works"): opening a stream borrows a connection
    # instead of opening one.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {"min_size": 2, "max_size": 8}

NOTIFY = {
    # None runs the embedded broker: fine for one server process.
    "REDIS_URL": os.environ.get("REDIS_URL") or None,
    "PUBLISH_TOKENS": os.environ.get("NOTIFY_PUBLISH_TOKENS", "").split(),
    # Prometheus's bearer token for /notify/metrics/ (staff users read it either way).
    "METRICS_TOKEN": os.environ.get("NOTIFY_METRICS_TOKEN") or None,
}

# Without DEBUG the demo is meant to be served over HTTPS (see SECURITY.md).
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = not DEBUG

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
# Where `manage.py collectstatic` copies them, for the web server (docs/deploy.md).
STATIC_ROOT = os.environ.get("DJANGO_STATIC_ROOT") or None
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"notify": {"handlers": ["console"], "level": "INFO"}},
}
