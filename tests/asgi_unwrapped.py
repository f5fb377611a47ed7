"""The project's ASGI application without ``NotifyASGIHandler``: Django's own handler serves
every request, the stream included, through the fallback view ``notify.views.stream``.

``gzip_application`` is the same with ``GZipMiddleware`` outermost, as some projects have it;
``slow_response_application`` with ``SlowResponseMiddleware``.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
application = get_asgi_application()


class SlowResponseMiddleware:
    """Awaits after the view returned, as middleware that saves something with the response
    does (Django's own run their process_response in a thread): a client that leaves then
    cancels the request before its streaming body is ever read."""

    async_capable = True
    sync_capable = False

    def __init__(self, get_response):
        self.get_response = get_response

    async def __call__(self, request):
        import asyncio

        response = await self.get_response(request)
        await asyncio.sleep(0.3)
        return response


def _with_middleware(*outermost):
    from django.conf import settings
    from django.core.handlers.asgi import ASGIHandler

    middleware = settings.MIDDLEWARE
    settings.MIDDLEWARE = [*outermost, *middleware]
    try:
        return ASGIHandler()  # reads MIDDLEWARE once, here
    finally:
        settings.MIDDLEWARE = middleware


gzip_application = _with_middleware("django.middleware.gzip.GZipMiddleware")
slow_response_application = _with_middleware("tests.asgi_unwrapped.SlowResponseMiddleware")
