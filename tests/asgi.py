import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter  # noqa: E402

from notify.asgi import NotifyASGIHandler  # noqa: E402
from notify.routing import websocket_application  # noqa: E402

application = ProtocolTypeRouter(
    {"http": NotifyASGIHandler(django_application), "websocket": websocket_application()}
)

# The WebSocket stream without Channels' AuthMiddlewareStack: the consumer reads the session.
application_without_auth_middleware = ProtocolTypeRouter(
    {
        "http": NotifyASGIHandler(django_application),
        "websocket": websocket_application(auth_middleware=False),
    }
)
