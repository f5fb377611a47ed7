"""A minimal Django project serving django-eventstream 5.x, the closest Django peer of notify,
configured as its README recommends for production with Redis: daphne, ``EVENTSTREAM_REDIS``
for fan-out between processes, and ``DjangoModelStorage`` so that a client reconnecting with
``Last-Event-ID`` is replayed from the database, as notify's clients are.

It lives in the bench environment only (``.bench-venv``, ``bench/requirements.txt``):
django-eventstream is never a dependency of the project.
"""
