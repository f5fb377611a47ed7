"""ASGI entry point: Django's own handler, as django-eventstream's README deploys it
(``daphne bench.eventstream.asgi:application``)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.eventstream.settings")

application = get_asgi_application()
