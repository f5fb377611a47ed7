"""One SSE endpoint: channel ``bench`` at ``/events/``, the way django-eventstream's README
routes a fixed channel."""

import django_eventstream
from django.urls import include, path

urlpatterns = [
    path("events/", include(django_eventstream.urls), {"channels": ["bench"]}),
]
