from django.contrib import admin
from django.contrib.auth.views import LogoutView
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("notify/", include("notify.urls")),
    # Django's own logout for any user (the admin's logs out staff only), which the soak
    # harness posts to: tests/soak/accounts.py.
    path("accounts/logout/", LogoutView.as_view(next_page="/"), name="logout"),
    # notify.js and a blank page that loads it, for tests/test_notify_js.py.
    path("", include("tests.js_pages")),
]
