"""The form staff publish an event with, in the admin."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.forms.renderers import BaseRenderer
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from notify.api import Prepared, prepare
from notify.models import Event
from notify.sse import CONTROL_PREFIX
from notify.validation import (
    CHANNEL_CHARS,
    EVENT_CHARS,
    MAX_CHANNEL_LENGTH,
    MAX_DEPTH,
    MAX_EVENT_LENGTH,
    refuse_json_constant,
    validate_channel,
    validate_event_type,
)

# Values are suggested from the newest events only: a DISTINCT over the whole table would
# read every row, and with a channel per user the list would never end.
SUGGESTION_SCAN = 1000
MAX_SUGGESTIONS = 100


def recent_values(field: str) -> list[str]:
    """Up to ``MAX_SUGGESTIONS`` distinct values of ``field`` among the newest
    ``SUGGESTION_SCAN`` events, the most recently used first, then sorted."""
    newest = Event.objects.order_by("-id").values_list(field, flat=True)[:SUGGESTION_SCAN]
    return sorted(list(dict.fromkeys(newest))[:MAX_SUGGESTIONS])


class SuggestingTextInput(forms.TextInput):
    """A text input with a ``<datalist>`` of suggestions, computed when it is rendered."""

    def __init__(
        self, suggestions: Callable[[], Sequence[str]], attrs: dict[str, Any] | None = None
    ) -> None:
        super().__init__(attrs)
        self.suggestions = suggestions

    def render(
        self,
        name: str,
        value: Any,
        attrs: dict[str, Any] | None = None,
        renderer: BaseRenderer | None = None,
    ) -> SafeString:
        list_id = f"{(attrs or {}).get('id') or name}_suggestions"
        field = super().render(name, value, {**(attrs or {}), "list": list_id}, renderer)
        options = format_html_join(
            "", '<option value="{}">', ((choice,) for choice in self.suggestions())
        )
        return format_html('{}<datalist id="{}">{}</datalist>', field, list_id, options)


def parse_json(text: str) -> Any:
    """The JSON in ``text``; empty text is null. Raises ``ValidationError`` saying what is
    wrong."""
    if not text:
        return None
    try:
        return json.loads(text, parse_constant=refuse_json_constant)
    except ValueError as exc:  # a JSONDecodeError, a refused constant, too many digits
        raise ValidationError(f"Data is not valid JSON: {exc}", code="invalid_json") from exc
    except RecursionError as exc:
        raise ValidationError(
            f"Data is nested more than {MAX_DEPTH} levels deep", code="too_deep"
        ) from exc


class PublishEventForm(forms.ModelForm):
    """Channel, type and JSON data of a new event, checked by notify's own rules.

    Saving is the admin's job: it publishes ``prepared`` with ``notify.api.publish_many``,
    never ``save()``, so that the row is stored under the ordering lock and broadcast.
    """

    # Names are not stripped: the library decides whether what was typed is a valid name.
    channel = forms.CharField(
        strip=False,
        widget=SuggestingTextInput(
            partial(recent_values, "channel"), attrs={"class": "vTextField"}
        ),
        help_text=f"1 to {MAX_CHANNEL_LENGTH} characters of {CHANNEL_CHARS}",
    )
    event = forms.CharField(
        label="Type",
        strip=False,
        initial="message",
        widget=forms.TextInput(attrs={"class": "vTextField"}),
        help_text=(
            f"1 to {MAX_EVENT_LENGTH} characters of {EVENT_CHARS}, "
            f'not starting with "{CONTROL_PREFIX}"'
        ),
    )
    data = forms.CharField(
        required=False,
        widget=forms.Textarea(attrs={"class": "vLargeTextField", "spellcheck": "false"}),
        help_text='JSON, e.g. {"status": "paid"}, 42 or "text". Empty is null.',
    )

    prepared: Prepared

    class Meta:
        model = Event
        fields = ["channel", "event", "data"]

    def clean_channel(self) -> str:
        return validate_channel(self.cleaned_data["channel"])

    def clean_event(self) -> str:
        return validate_event_type(self.cleaned_data["event"])

    def clean_data(self) -> Any:
        return parse_json(self.cleaned_data["data"])

    def clean(self) -> dict[str, Any]:
        cleaned_data = super().clean()
        if not self.errors:
            try:
                self.prepared = prepare(
                    cleaned_data["channel"], cleaned_data["data"], event=cleaned_data["event"]
                )
            except ValidationError as error:
                # The channel and the type passed the checks prepare() starts with, so what
                # it refuses now is the data (too large, NUL, too deep...).
                self.add_error("data", error)
        return cleaned_data
