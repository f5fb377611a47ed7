"""notify's Prometheus metrics, all in one registry of their own.

``REGISTRY`` is not prometheus_client's global default registry, so that notify's metrics and
a project's own do not mix unless the project wants them to: ``/notify/metrics/`` serves this
registry alone, and a project that serves the global registry can add notify's to it with
``prometheus_client.REGISTRY.register(notify.metrics.REGISTRY)`` (a registry is a collector).

Every figure is this process's own: each server process counts what it does (a publish is
counted where ``publish`` ran, a delivery where the stream is open). Sum them in Prometheus.

The hub's fan-out is the hot path: nothing here is touched once per stream per event
(deliveries are counted once per event, the open streams are read when scraped).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

OPEN_STREAMS = Gauge(
    "notify_open_streams",
    "Streams open now in this process.",
    registry=REGISTRY,
)
STREAMS_OPENED = Counter(
    "notify_streams_opened",
    "Streams admitted by this process, by transport: sse or websocket.",
    ["transport"],
    registry=REGISTRY,
)
EVENTS_PUBLISHED = Counter(
    "notify_events_published",
    "Events stored by this process and broadcast after their commit.",
    registry=REGISTRY,
)
EVENTS_DELIVERED = Counter(
    "notify_events_delivered",
    "Live events handed by the hub to streams: one per open stream of the event's channel.",
    registry=REGISTRY,
)
REPLAYS = Counter(
    "notify_replays",
    "Streams that began a catch-up from their client's cursor.",
    registry=REGISTRY,
)
EVENTS_REPLAYED = Counter(
    "notify_events_replayed",
    "Events sent to streams from the database (catch-ups, and re-reads after an overflow).",
    registry=REGISTRY,
)
RESETS = Counter(
    "notify_resets",
    "notify.reset events sent, by reason: invalid-cursor, unknown-cursor, history-gone.",
    ["reason"],
    registry=REGISTRY,
)
SLOW_CLIENT_DISCONNECTS = Counter(
    "notify_slow_client_disconnects",
    "Live streams closed because their client fell more than MAX_BUFFER events behind.",
    registry=REGISTRY,
)
BROKER_RECONNECTS = Counter(
    "notify_broker_reconnects",
    "Broker subscriptions re-established after the first (a Redis reconnect; with the "
    "embedded broker, an overflow of its queue), each followed by a database read.",
    registry=REGISTRY,
)
POLLING_FALLBACKS = Counter(
    "notify_polling_fallbacks",
    "Broker subscriptions found down, each once: the hub then polls the database.",
    registry=REGISTRY,
)
DELIVERY_LATENCY = Histogram(
    "notify_delivery_latency_seconds",
    "From an event's created time (set by its publisher) to the moment the hub hands it to "
    "the streams of its channel; events no stream wants are not observed.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

# Every reason appears (at 0) from the first scrape, so that rate() sees the first reset.
RESET_REASONS = ("invalid-cursor", "unknown-cursor", "history-gone")
for _reason in RESET_REASONS:
    RESETS.labels(reason=_reason)


def _open_streams() -> int:
    # Imported when scraped: notify.hub counts with the metrics of this module.
    from notify.hub import open_streams

    return open_streams()


OPEN_STREAMS.set_function(_open_streams)
