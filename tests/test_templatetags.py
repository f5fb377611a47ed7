from django.contrib.staticfiles.storage import StaticFilesStorage
from django.template import Context, Template
from django.test import override_settings


class VersionedStorage(StaticFilesStorage):
    """URLs with a query string holding characters that must be escaped in HTML."""

    def url(self, name: str | None) -> str:
        return super().url(name) + '?v=1&x="'


def render(source: str) -> str:
    return Template("{% load notify %}" + source).render(Context())


@override_settings(STATIC_URL="/static/")
def test_notify_script_loads_the_module_with_the_stream_url() -> None:
    assert render("{% notify_script %}") == (
        '<script type="module" src="/static/notify/notify.js"'
        ' data-stream-url="/notify/stream/"></script>'
    )


@override_settings(
    STATIC_URL="/static/",
    INSTALLED_APPS=[
        "django.contrib.staticfiles",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "notify",
    ],
    STORAGES={
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "tests.test_templatetags.VersionedStorage"},
    },
)
def test_notify_script_uses_the_staticfiles_storage_and_escapes_its_url() -> None:
    assert 'src="/static/notify/notify.js?v=1&amp;x=&quot;"' in render("{% notify_script %}")


def test_notify_stream_url() -> None:
    assert render("{% notify_stream_url %}") == "/notify/stream/"
