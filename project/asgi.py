"""ASGI entry point of the demo: Django, with notify's streams served in front of it (SSE),
and the same stream over a WebSocket through Channels."""

import os

from django.conf import settings
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Django must be set up before notify's modules are imported.
django_application = get_asgi_application()
if settings.DEBUG:
    # What runserver does: serve static files from the apps, for the demo under daphne.
    django_application = ASGIStaticFilesHandler(django_application)

from channels.routing import ProtocolTypeRouter  # noqa: E402

from notify.asgi import NotifyASGIHandler  # noqa: E402
from notify.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": NotifyASGIHandler(django_application),
        # /notify/ws/: the origin check (ALLOWED_HOSTS and NOTIFY["CORS_ALLOWED_ORIGINS"]),
        # then Channels' AuthMiddlewareStack, then notify's consumer.
        "websocket": websocket_application(),
    }
)
