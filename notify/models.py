from __future__ import annotations

from django.db import models
from django.utils import timezone

from notify.sse import encode_json, stored_event_frame


class Event(models.Model):
    """One published event. Its id is the global cursor clients resume from."""

    id = models.BigAutoField(primary_key=True)
    channel = models.CharField(max_length=200)
    event = models.CharField("type", max_length=64, default="message")
    data = models.JSONField(null=True, blank=True)
    created = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["channel", "id"], name="notify_event_channel_id")]
        verbose_name = "event"
        verbose_name_plural = "events"

    def __str__(self) -> str:
        return f"#{self.id} {self.channel} {self.event}"

    def sse_frame(self, payload_json: str | None = None) -> bytes:
        """The SSE bytes of this event. ``payload_json`` skips re-encoding ``data``."""
        if payload_json is None:
            payload_json = encode_json(self.data)
        return stored_event_frame(self.id, self.channel, self.event, self.created, payload_json)
