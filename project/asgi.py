"""ASGI entry point of the demo: Django, with notify's streams served in front of it."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

# Django must be set up before notify's modules are imported.
django_application = get_asgi_application()

from notify.asgi import NotifyASGIHandler  # noqa: E402

application = NotifyASGIHandler(django_application)
