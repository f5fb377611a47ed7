"""The project's ASGI application without ``NotifyASGIHandler``: Django's own handler serves
every request, the stream included, through the fallback view ``notify.views.stream``.

``gzip_application`` is the same with ``GZipMiddleware`` outermost, as some projects have it.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
application = get_asgi_application()


def _with_gzip():
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler

    middleware = settings.MIDDLEWARE
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *middleware]
    try:
        return ASGIHandler()  # reads MIDDLEWARE once, here
    finally:
        settings.MIDDLEWARE = middleware


gzip_application = _with_gzip()
