"""The notify bench targets' ASGI application: Django wrapped by notify's stream handler,
as the README tells projects to set it up."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.settings")
django_application = get_asgi_application()

from notify.asgi import NotifyASGIHandler  # noqa: E402  (needs Django set up)

application = NotifyASGIHandler(django_application)
