"""Template tags for pages that use notify's browser client::

    {% load notify static %}
    {% notify_script %}
    <script type="module">
      import { NotifyClient } from "{% static 'notify/notify.js' %}";
      const { streamUrl } = document.querySelector("script[data-stream-url]").dataset;
      const client = new NotifyClient(streamUrl, { channels: ["orders"] });
    </script>

``{% notify_stream_url %}`` gives the stream's URL for an attribute or a link.
"""

from __future__ import annotations

from django import template
from django.templatetags.static import static
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()

SCRIPT_PATH = "notify/notify.js"


@register.simple_tag
def notify_script() -> SafeString:
    """A ``<script type="module">`` loading notify.js, with the stream's URL in its
    ``data-stream-url`` attribute. A module runs once per page, so a page's own
    ``import`` of the same URL gets the same module."""
    return format_html(
        '<script type="module" src="{}" data-stream-url="{}"></script>',
        static(SCRIPT_PATH),
        reverse("notify:stream"),
    )


@register.simple_tag
def notify_stream_url() -> str:
    """The URL of ``notify:stream`` (autoescaped where it is used)."""
    return reverse("notify:stream")
