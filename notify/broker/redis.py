"""Redis pub/sub broker: one PUBLISH per event, one subscription per server process."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence

import redis
import redis.asyncio as aioredis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from notify.broker.base import RESYNC, Broker, Resync, Revocation

logger = logging.getLogger("notify.broker")

_RETRY_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
# Reconnect delays after Redis goes away: 0.1 s doubling to 2 s.
_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0
# After a failed PUBLISH, publishing leaves Redis alone this long (see RedisBroker._send).
_SKIP_AFTER_FAILURE = 1.0


class RedisBroker(Broker):
    def __init__(self, url: str, prefix: str = "notify", health_check_seconds: float = 15.0):
        self.url = url
        self.channel = f"{prefix}:events"
        # Revocations travel apart from events, on the same subscription.
        self.control_channel = f"{prefix}:control"
        self.health_check_seconds = health_check_seconds
        self._connected = False
        # Until then (time.monotonic()), publishing skips Redis: it failed moments ago.
        self._skip_until = 0.0
        self._client: redis.Redis | None = None
        self._client_lock = threading.Lock()
        self.presence_prefix = f"{prefix}:presence:"
        self.owners_prefix = f"{prefix}:streams:"
        # One client per event loop for presence reports and pings (a hub lives on one loop).
        self._presence_clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, aioredis.Redis
        ] = weakref.WeakKeyDictionary()

    @property
    def connected(self) -> bool:
        return self._connected

    def _publisher(self) -> redis.Redis:
        with self._client_lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.url,
                    socket_connect_timeout=2,
                    socket_timeout=2,
                    retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                    retry_on_error=[redis.ConnectionError, redis.TimeoutError],
                )
            return self._client

    def publish(self, notice: bytes) -> None:
        self.publish_many([notice])

    def revoke(self, user_id: str) -> None:
        # Always tried: a revocation is rare, and one skipped would leave streams open.
        self._send(self.control_channel, [user_id.encode()], "a revocation", skip=False)

    def publish_many(self, notices: list[bytes]) -> None:
        # The events are committed: when the notices cannot be sent, subscribers read the
        # events from the database (they poll while their own subscription is down, and
        # notice the gap or reconcile otherwise; see notify.hub).
        self._send(self.channel, notices, "events")

    def _send(self, channel: str, messages: list[bytes], what: str, skip: bool = True) -> None:
        """PUBLISH ``messages`` in one round trip, unless Redis failed moments ago.

        A failed attempt costs its retries (about 0.3 s when the connection is refused), and
        every publish of the process would pay that while Redis is down: after a failure,
        publishing skips Redis for ``_SKIP_AFTER_FAILURE`` seconds instead."""
        if skip and time.monotonic() < self._skip_until:
            return
        try:
            client = self._publisher()
            if len(messages) == 1:
                client.publish(channel, messages[0])  # a pipeline costs more for one
            else:
                pipeline = client.pipeline(transaction=False)
                for message in messages:
                    pipeline.publish(channel, message)
                pipeline.execute()
        except redis.RedisError as exc:
            self._skip_until = time.monotonic() + _SKIP_AFTER_FAILURE
            logger.warning(
                "notify: could not send %s to Redis at %s (%s); not trying again for %g s",
                what,
                self.url,
                exc,
                _SKIP_AFTER_FAILURE,
            )

    async def ping(self) -> None:
        """PING, on the client of the running event loop (no new connection per call)."""
        await self._presence_client().ping()

    async def report_presence(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        await self._replace_report(f"{self.presence_prefix}{key}", counts, ttl)

    def stream_counts(self, channels: Sequence[str]) -> dict[str, int] | None:
        totals = dict.fromkeys(channels, 0)
        if not channels:
            return totals
        try:
            client = self._publisher()
            # One hash per server process; a process that died stops counting when its
            # hash expires.
            for name in client.scan_iter(match=f"{self.presence_prefix}*", count=1000):
                for channel, value in zip(channels, client.hmget(name, channels), strict=True):
                    totals[channel] += int(value or 0)
        except redis.RedisError as exc:
            logger.warning("notify: could not read stream counts from Redis: %s", exc)
            return None
        return totals

    async def change_stream_owners(
        self, key: str, name: str, change: int, ttl: float, count: bool = True
    ) -> int | None:
        client = self._presence_client()
        async with asyncio.timeout(ttl):
            async with client.pipeline(transaction=True) as pipeline:
                pipeline.hincrby(f"{self.owners_prefix}{key}", name, change)
                pipeline.pexpire(f"{self.owners_prefix}{key}", int(ttl * 1000))
                await pipeline.execute()
            if not count:
                return None
            # One hash per server process, as for presence.
            names = [n async for n in client.scan_iter(match=f"{self.owners_prefix}*", count=1000)]
            async with client.pipeline(transaction=False) as pipeline:
                for hash_name in names:
                    pipeline.hget(hash_name, name)
                values = await pipeline.execute()
        return sum(int(value or 0) for value in values)

    async def report_stream_owners(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        await self._replace_report(f"{self.owners_prefix}{key}", counts, ttl)

    async def _replace_report(self, name: str, counts: Mapping[str, int], ttl: float) -> None:
        """Replace the hash ``name`` (one process's report) with ``counts``, expiring after
        ``ttl`` seconds unless reported again; an empty report just deletes it."""
        client = self._presence_client()
        # asyncio.timeout rather than a socket timeout (see subscribe).
        async with asyncio.timeout(ttl), client.pipeline(transaction=True) as pipeline:
            pipeline.delete(name)
            if counts:
                # redis-py types the mapping's keys invariantly; str keys are fine.
                pipeline.hset(name, mapping=dict(counts))  # type: ignore[arg-type]
                pipeline.pexpire(name, int(ttl * 1000))
            await pipeline.execute()

    def _presence_client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._presence_clients.get(loop)
        if client is None:
            client = self._presence_clients[loop] = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=2, socket_timeout=None
            )
        return client

    async def subscribe(self) -> AsyncIterator[bytes | Resync | Revocation]:
        control = self.control_channel.encode()
        delay = _FIRST_DELAY
        while True:
            client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=2,
                # No socket timeout: redis-py then wraps each write in asyncio.wait_for,
                # which on Python 3.11 can swallow a cancellation (the hub would not stop).
                # get_message's own timeout and the health checks find a dead connection.
                socket_timeout=None,
                health_check_interval=self.health_check_seconds,
                socket_keepalive=True,
            )
            pubsub = client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel, self.control_channel)
                self._connected = True
                delay = _FIRST_DELAY
                yield RESYNC
                while True:
                    message = await pubsub.get_message(timeout=self.health_check_seconds)
                    if message is None or message["type"] != "message":
                        continue
                    if message["channel"] == control:
                        yield Revocation(message["data"].decode())
                    else:
                        yield message["data"]
            except _RETRY_ERRORS as exc:
                if self._connected:
                    logger.warning("notify: lost the Redis subscription (%s); reconnecting", exc)
            finally:
                self._connected = False
                await _close_quietly(pubsub, client)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    async def aclose(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        presence = self._presence_clients.pop(asyncio.get_running_loop(), None)
        if presence is not None:
            await presence.aclose()


async def _close_quietly(pubsub: aioredis.client.PubSub, client: aioredis.Redis) -> None:
    try:
        await pubsub.aclose()
        await client.aclose()
    except Exception:  # the connection is already broken; nothing to release
        logger.debug("notify: error closing a broken Redis connection", exc_info=True)
