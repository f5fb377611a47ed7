import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
django_application = get_asgi_application()

from notify.asgi import NotifyASGIHandler  # noqa: E402

application = NotifyASGIHandler(django_application)
