"""notify.presence and notify.audience.stream_counts: open streams per channel, reported by
every process's hub, expiring when a process goes away."""

import asyncio
import os
import signal
import time
from collections.abc import Callable

import pytest
from django.core.exceptions import ValidationError
from django.test import override_settings

import notify
from notify.audience import stream_counts
from notify.broker import get_broker
from notify.hub import Hub
from tests.conftest import SSEClient

pytestmark = pytest.mark.django_db(transaction=True)


def eventually(read: Callable[[], object], wanted: object, within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while (got := read()) != wanted:
        assert time.monotonic() < deadline, f"{got!r} != {wanted!r}"
        time.sleep(0.05)


def test_the_embedded_broker_counts_the_streams_of_this_process(settings):
    local = {**settings.NOTIFY, "BROKER": "notify.broker.local.LocalBroker"}
    with override_settings(NOTIFY={**local, "PRESENCE_SECONDS": 0.05}):

        async def main() -> list[dict[str, int] | None]:
            hub = Hub(get_broker())
            seen = []
            try:
                a1 = await hub.subscribe(["a"])
                await hub.subscribe(["a", "b"])
                await asyncio.sleep(0.2)
                seen.append(stream_counts(["a", "b", "c"]))
                hub.unsubscribe(a1)
                await asyncio.sleep(0.2)
                seen.append(stream_counts(["b", "a", "b"]))
            finally:
                hub.close()
            await asyncio.sleep(0.2)  # three intervals: the closed hub's report expired
            seen.append(stream_counts(["a"]))
            return seen

        assert asyncio.run(main()) == [{"a": 2, "b": 1, "c": 0}, {"a": 1, "b": 1}, {"a": 0}]


def test_redis_sums_every_process_and_forgets_a_killed_one(start_server):
    first = start_server(PRESENCE_SECONDS=0.2)
    second = start_server(PRESENCE_SECONDS=0.2)
    clients = [
        SSEClient(f"{first.url}/notify/stream/?channel=news"),
        SSEClient(f"{first.url}/notify/stream/?channel=news&channel=sport"),
        SSEClient(f"{second.url}/notify/stream/?channel=news"),
    ]
    try:
        for client in clients:
            assert client.next().event == "notify.open"
        eventually(
            lambda: stream_counts(["news", "sport", "other"]), {"news": 3, "sport": 1, "other": 0}
        )
        clients.pop(0).close()
        eventually(lambda: stream_counts(["news", "sport"]), {"news": 2, "sport": 1})
        # A process killed without any chance to clean up stops counting once its report
        # expires (three intervals).
        os.kill(first.pid, signal.SIGKILL)
        eventually(lambda: stream_counts(["news", "sport"]), {"news": 1, "sport": 0})
    finally:
        for client in clients:
            client.close()


def test_no_counts_when_redis_is_unreachable(settings):
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        assert stream_counts(["news"]) is None


def test_presence_is_the_open_streams_of_one_channel_over_every_process(start_server):
    first = start_server(PRESENCE_SECONDS=0.2)
    second = start_server(PRESENCE_SECONDS=0.2)
    with (
        SSEClient(f"{first.url}/notify/stream/?channel=news") as a,
        SSEClient(f"{second.url}/notify/stream/?channel=news&channel=sport") as b,
    ):
        assert a.next().event == b.next().event == "notify.open"
        eventually(lambda: notify.presence("news"), 2)
        assert notify.presence("sport") == 1
        assert notify.presence("nobody-here") == 0
    eventually(lambda: notify.presence("news"), 0)


def test_presence_is_none_when_redis_is_unreachable(settings):
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": "redis://127.0.0.1:1/0"}):
        assert notify.presence("news") is None


def test_presence_refuses_a_channel_no_stream_can_be_open_on():
    with pytest.raises(ValidationError, match='channel "a b"'):
        notify.presence("a b")


def test_presence_stays_the_function_once_the_module_behind_it_is_imported():
    # Importing a submodule sets it as an attribute of its package: a module named
    # notify/presence.py would replace the function as soon as anything imported it.
    import notify.audience

    assert callable(notify.presence)
    assert notify.presence.__module__ == "notify"


def test_a_silent_redis_costs_a_read_a_moment_then_reads_skip_it_until_it_answers(
    settings, private_redis
):
    """Presence is read by requests (the API, the dashboard, the admin): a Redis that
    accepts connections but answers nothing must not hold them."""
    with override_settings(NOTIFY={**settings.NOTIFY, "REDIS_URL": private_redis.url}):
        assert stream_counts(["news"]) == {"news": 0}
        private_redis.pause()
        try:
            started = time.monotonic()
            assert stream_counts(["news"]) is None
            assert time.monotonic() - started < 1.0
            # Right after a failure, reads do not ask again.
            started = time.monotonic()
            assert notify.presence("news") is None
            assert time.monotonic() - started < 0.1
        finally:
            private_redis.resume()
        eventually(lambda: stream_counts(["news"]), {"news": 0})
