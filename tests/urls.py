from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("notify/", include("notify.urls")),
    # notify.js and a blank page that loads it, for tests/test_notify_js.py.
    path("", include("tests.js_pages")),
]
