"""Events in the Django admin: publish from the add form, browse, publish again, delete.

Every write goes through ``notify.api`` (the ordering lock, the broadcast after commit), so
published events are read-only here.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.templatetags.admin_urls import add_preserved_filters
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from notify import authorization
from notify.api import prepare, publish_many
from notify.audience import stream_counts
from notify.forms import PublishEventForm, recent_values
from notify.models import Event

PREVIEW_CHARS = 80
# "Publish again" stores its copies in one transaction that holds the ordering lock, which
# every publisher waits for: keep it to a page of the change list.
MAX_REPUBLISH = 100


class RecentValuesFilter(admin.SimpleListFilter):
    """Offers the values of ``parameter_name`` in use among the newest events (see
    ``recent_values``), where Django's own filter would list every value in the table."""

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [(value, value) for value in recent_values(self.parameter_name)]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Event]) -> QuerySet[Event]:
        value = self.value()
        return queryset if value is None else queryset.filter(**{self.parameter_name: value})


class ChannelFilter(RecentValuesFilter):
    title = "channel"
    parameter_name = "channel"


class TypeFilter(RecentValuesFilter):
    title = "type"
    parameter_name = "event"


@admin.register(Event)
class EventAdmin(admin.ModelAdmin):
    list_display = ["id", "channel", "event", "created", "preview"]
    list_filter = [ChannelFilter, TypeFilter]
    search_fields = ["channel", "data"]
    search_help_text = "Searches the channel and the data's JSON text."
    date_hierarchy = "created"
    ordering = ["-id"]
    # The unfiltered total would be a COUNT(*) of the whole table on every page.
    show_full_result_count = False
    actions = ["publish_again"]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        context = getattr(response, "context_data", None)
        if context is not None and "cl" in context:
            # One broker read per page, for the channels the page shows (not the whole table)
            # that this user may read: a count tells who is listening on a channel.
            shown = sorted({event.channel for event in context["cl"].result_list})
            refused = set(authorization.refused(request.user, shown))
            counts = stream_counts([channel for channel in shown if channel not in refused])
            context["stream_counts"] = None if counts is None else sorted(counts.items())
        return response

    @admin.display(description="data")
    def preview(self, event: Event) -> str:
        return Truncator(json.dumps(event.data, ensure_ascii=False)).chars(PREVIEW_CHARS)

    @admin.display(description="data")
    def data_json(self, event: Event) -> SafeString:
        text = json.dumps(event.data, ensure_ascii=False, indent=2, sort_keys=True)
        return format_html("<pre>{}</pre>", text)

    def get_fields(self, request: HttpRequest, obj: Event | None = None) -> list[str]:
        if obj is None:
            return list(PublishEventForm.base_fields)
        return ["id", "channel", "event", "created", "data_json"]

    def get_form(
        self, request: HttpRequest, obj: Event | None = None, **kwargs: Any
    ) -> type[forms.ModelForm]:
        if obj is None:
            kwargs["form"] = PublishEventForm
        return super().get_form(request, obj, **kwargs)

    def has_change_permission(self, request: HttpRequest, obj: Event | None = None) -> bool:
        # Streams may already have delivered an event and will replay it as stored: an edit
        # would make clients disagree. Staff with the view permission still see it all.
        return False

    def save_model(
        self, request: HttpRequest, obj: Event, form: PublishEventForm, change: bool
    ) -> None:
        # Never obj.save(): ordering and broadcasting rely on every write going through
        # notify.api. The admin then logs and links the stored row through obj.
        [published] = publish_many([form.prepared])
        obj.pk, obj.data, obj.created = published.pk, published.data, published.created

    def response_add(
        self, request: HttpRequest, obj: Event, post_url_continue: str | None = None
    ) -> HttpResponse:
        self.message_user(
            request, f"Published event #{obj.pk} on channel “{obj.channel}”.", messages.SUCCESS
        )
        if "_addanother" in request.POST:
            context = {
                "preserved_filters": self.get_preserved_filters(request),
                "opts": Event._meta,
            }
            return HttpResponseRedirect(add_preserved_filters(context, request.path))
        return self.response_post_save_add(request, obj)

    @admin.action(description="Publish again", permissions=["add"])
    def publish_again(self, request: HttpRequest, queryset: QuerySet[Event]) -> None:
        events = list(queryset.order_by("id")[: MAX_REPUBLISH + 1])
        if len(events) > MAX_REPUBLISH:
            self.message_user(
                request,
                f"Nothing published: select at most {MAX_REPUBLISH} events to publish again.",
                messages.ERROR,
            )
            return
        prepared = []
        for event in events:
            try:
                prepared.append(prepare(event.channel, event.data, event=event.event))
            except ValidationError as error:
                # Stored before a limit was lowered, or written around notify.api.
                self.message_user(
                    request,
                    f"Nothing published: event #{event.pk} cannot be published again: "
                    f"{error.messages[0]}",
                    messages.ERROR,
                )
                return
        published = publish_many(prepared)
        self.message_user(
            request,
            f"Published {len(published)} event{'s' if len(published) != 1 else ''} again: "
            + ", ".join(f"#{event.pk}" for event in published),
            messages.SUCCESS,
        )
