"""The notify bench targets' ASGI application, as the README tells projects to set it up:
Django wrapped by notify's stream handler for HTTP (the SSE stream), and notify's
WebSocket stream through Channels, so that one server serves both transports."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402  (needs Django set up)

from notify.asgi import NotifyASGIHandler  # noqa: E402
from notify.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {"http": NotifyASGIHandler(django_application), "websocket": websocket_application()}
)
