"""ASGI entry point of the demo: Django, with notify's streams served in front of it."""

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

from notify.asgi import NotifyASGIHandler  # noqa: E402

application = NotifyASGIHandler(django_application)
