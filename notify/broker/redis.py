"""Redis pub/sub broker: one PUBLISH per event, one subscription per server process.

Each process also keeps short-lived reports in Redis: its open streams per channel
(presence) and per owner (stream limits), one hash per process that expires unless written
again. A set per kind (the registry) names every process's hash, so that reading them costs
one round trip and a few commands per process, whatever else the database holds: a Redis
shared with a cache may hold millions of keys, which a SCAN would walk on every read. The
scripts below name the reports they read from the registry, not in ``KEYS``: they need one
Redis, not a cluster.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import NamedTuple

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.commands.core import AsyncScript, Script
from redis.retry import Retry

from notify.broker.base import RESYNC, Broker, Resync

logger = logging.getLogger("notify.broker")

_RETRY_ERRORS = (redis.ConnectionError, redis.TimeoutError, OSError)
# Reconnect delays after Redis goes away: 0.1 s doubling to 2 s.
_FIRST_DELAY = 0.1
_MAX_DELAY = 2.0
# How long a PUBLISH (or its connection) may take, in seconds: the publisher's request, or
# a logout's, waits for it.
_PUBLISH_TIMEOUT = 1.0
# After a failed PUBLISH, publishing leaves Redis alone this long (see RedisBroker._send);
# likewise presence reads after a failed one.
_SKIP_AFTER_FAILURE = 1.0
# How long a presence read waits for Redis, in seconds: a request (the presence API, the
# dashboard) waits for it, and "unknown" is a fine answer from a Redis that does not answer.
READ_TIMEOUT = 0.5

# Shared by the scripts. A report of the registry whose hash has expired (its process
# stopped reporting) is dropped from the registry as it is found.
_LUA_REPORTS = """
local function live_reports(registry)
  local live = {}
  for _, report in ipairs(redis.call('SMEMBERS', registry)) do
    if redis.call('EXISTS', report) == 1 then
      live[#live + 1] = report
    else
      redis.call('SREM', registry, report)
    end
  end
  return live
end

-- Adds what the hash ``report`` holds for the fields ARGV[first..] to ``totals``, in slices
-- (Lua unpacks a few thousand values at most).
local function add(totals, report, first)
  for start = first, #ARGV, 1000 do
    local stop = math.min(start + 999, #ARGV)
    local values = redis.call('HMGET', report, unpack(ARGV, start, stop))
    for i = 1, #values do
      if values[i] then
        local at = start - first + i
        totals[at] = totals[at] + tonumber(values[i])
      end
    end
  end
end

-- Names ``report`` in the registry for at least ``ttl`` ms, as long as the report lives.
local function register(registry, report, ttl)
  redis.call('SADD', registry, report)
  if redis.call('PTTL', registry) < ttl then
    redis.call('PEXPIRE', registry, ttl)
  end
end
"""

# KEYS: this process's report (owner -> streams, and "#seq"), the registry.
# ARGV: seq, ttl (ms), "1" to replace the whole report, the number of owners written, that
# many owner, count pairs, then the owners asked about. Returns, per owner asked about, the
# streams every other live report holds.
_WRITE_OWNERS = (
    _LUA_REPORTS
    + """
local report, registry = KEYS[1], KEYS[2]
local seq, ttl, written = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
if seq > tonumber(redis.call('HGET', report, '#seq') or '0') then
  if ARGV[3] == '1' then
    redis.call('DEL', report)
  end
  for i = 5, 4 + 2 * written, 2 do
    if ARGV[i + 1] == '0' then
      redis.call('HDEL', report, ARGV[i])
    else
      redis.call('HSET', report, ARGV[i], ARGV[i + 1])
    end
  end
  redis.call('HSET', report, '#seq', seq)
  redis.call('PEXPIRE', report, ttl)
end
register(registry, report, ttl)
local first = 5 + 2 * written
local others = {}
for i = first, #ARGV do
  others[i - first + 1] = 0
end
if #others > 0 then
  for _, other in ipairs(live_reports(registry)) do
    if other ~= report then
      add(others, other, first)
    end
  end
end
return others
"""
)

# KEYS: this process's report (channel -> streams), the registry. ARGV: ttl (ms), then the
# whole report as channel, count pairs (none: the process has no streams).
_WRITE_PRESENCE = (
    _LUA_REPORTS
    + """
local report, registry, ttl = KEYS[1], KEYS[2], tonumber(ARGV[1])
redis.call('DEL', report)
if #ARGV == 1 then
  redis.call('SREM', registry, report)
  return 0
end
for start = 2, #ARGV, 1000 do
  redis.call('HSET', report, unpack(ARGV, start, math.min(start + 999, #ARGV)))
end
redis.call('PEXPIRE', report, ttl)
register(registry, report, ttl)
return 1
"""
)

# KEYS: the registry. ARGV: the channels. Returns their streams summed over every live report.
_READ_PRESENCE = (
    _LUA_REPORTS
    + """
local totals = {}
for i = 1, #ARGV do
  totals[i] = 0
end
for _, report in ipairs(live_reports(KEYS[1])) do
  add(totals, report, 1)
end
return totals
"""
)


class _LoopClient(NamedTuple):
    """The Redis connections of one event loop (reports, counts, pings), with the scripts
    they run."""

    redis: aioredis.Redis
    write_owners: AsyncScript
    write_presence: AsyncScript


class RedisBroker(Broker):
    def __init__(self, url: str, prefix: str = "notify", health_check_seconds: float = 15.0):
        self.url = url
        self.channel = f"{prefix}:events"
        self.health_check_seconds = health_check_seconds
        self._connected = False
        # Until then (time.monotonic()), publishing skips Redis: it failed moments ago.
        self._skip_until = 0.0
        self._client: redis.Redis | None = None
        self._client_lock = threading.Lock()
        # One hash per process and event loop (its report), and the set naming them all.
        self.presence_prefix = f"{prefix}:presence:"
        self.presence_registry = f"{prefix}:presence-reports"
        self.owners_prefix = f"{prefix}:streams:"
        self.owners_registry = f"{prefix}:streams-reports"
        # Presence reads, from request threads; after a failure they skip Redis until then.
        self._reader: tuple[redis.Redis, Script] | None = None
        self._reads_skip_until = 0.0
        # One client per event loop for reports, counts and pings (a hub lives on one loop).
        self._loop_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = (
            weakref.WeakKeyDictionary()
        )

    @property
    def connected(self) -> bool:
        return self._connected

    def _publisher(self) -> redis.Redis:
        with self._client_lock:
            if self._client is None:
                self._client = redis.Redis.from_url(
                    self.url,
                    socket_connect_timeout=_PUBLISH_TIMEOUT,
                    socket_timeout=_PUBLISH_TIMEOUT,
                    # A refused or reset connection is retried at once; a timeout is not:
                    # publishing runs on the publisher's request, and a silent Redis would
                    # cost it every attempt's timeout.
                    retry=Retry(
                        ExponentialBackoff(cap=0.5, base=0.05),
                        2,
                        supported_errors=(redis.ConnectionError,),
                    ),
                )
            return self._client

    def publish(self, notice: bytes) -> None:
        self.publish_many([notice])

    def publish_many(self, notices: list[bytes]) -> None:
        # The events are committed: when the notices cannot be sent, subscribers read the
        # events from the database (they poll while their own subscription is down, and
        # notice the gap or reconcile otherwise; see notify.hub).
        self._send(self.channel, notices)

    def _send(self, channel: str, messages: list[bytes]) -> None:
        """PUBLISH ``messages`` in one round trip, unless Redis failed moments ago.

        A failed attempt costs up to ``_PUBLISH_TIMEOUT`` (a silent Redis) or its quick
        retries (a refused connection), and every publish of the process would pay that while
        Redis is down: after a failure, publishing skips Redis for ``_SKIP_AFTER_FAILURE``
        seconds instead."""
        if time.monotonic() < self._skip_until:
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
                "notify: could not send events to Redis at %s (%s); not trying again for %g s",
                self.url,
                exc,
                _SKIP_AFTER_FAILURE,
            )

    async def ping(self) -> None:
        """PING, on the client of the running event loop (no new connection per call)."""
        await self._loop_client().redis.ping()

    async def report_presence(self, key: str, counts: Mapping[str, int], ttl: float) -> None:
        client = self._loop_client()
        args: list[str | int] = [int(ttl * 1000)]
        for channel, count in counts.items():
            args += [channel, count]
        # asyncio.timeout rather than a socket timeout (see subscribe).
        async with asyncio.timeout(ttl):
            await client.write_presence(
                keys=[f"{self.presence_prefix}{key}", self.presence_registry], args=args
            )

    def stream_counts(self, channels: Sequence[str]) -> dict[str, int] | None:
        if not channels:
            return {}
        if time.monotonic() < self._reads_skip_until:
            return None
        try:
            _, read = self._presence_reader()
            totals = read(keys=[self.presence_registry], args=list(channels))
        except redis.RedisError as exc:
            self._reads_skip_until = time.monotonic() + _SKIP_AFTER_FAILURE
            logger.warning(
                "notify: could not read stream counts from Redis (%s); not trying again for %g s",
                exc,
                _SKIP_AFTER_FAILURE,
            )
            return None
        return {channel: int(total) for channel, total in zip(channels, totals, strict=True)}

    async def write_stream_owners(
        self,
        key: str,
        counts: Mapping[str, int],
        ttl: float,
        *,
        seq: int,
        replace: bool,
        others_of: Sequence[str],
    ) -> dict[str, int] | None:
        args: list[str | int] = [seq, int(ttl * 1000), int(replace), len(counts)]
        for name, count in counts.items():
            args += [name, count]
        args += others_of
        others = await self._loop_client().write_owners(
            keys=[f"{self.owners_prefix}{key}", self.owners_registry], args=args
        )
        return {name: int(count) for name, count in zip(others_of, others, strict=True)}

    def _presence_reader(self) -> tuple[redis.Redis, Script]:
        with self._client_lock:
            if self._reader is None:
                client = redis.Redis.from_url(
                    self.url,
                    socket_connect_timeout=READ_TIMEOUT,
                    socket_timeout=READ_TIMEOUT,
                    # A second try, at once, when the connection was found broken; none
                    # after a timeout (that would double the wait).
                    retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                )
                self._reader = (client, client.register_script(_READ_PRESENCE))
            return self._reader

    def _loop_client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        client = self._loop_clients.get(loop)
        if client is None:
            connection = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=2,
                # Callers bound their waits with asyncio.timeout (see subscribe).
                socket_timeout=None,
                # A second try, at once: a connection of the pool broken by a Redis restart
                # is found by the first.
                retry=AsyncRetry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            )
            client = self._loop_clients[loop] = _LoopClient(
                connection,
                connection.register_script(_WRITE_OWNERS),
                connection.register_script(_WRITE_PRESENCE),
            )
        return client

    async def subscribe(self) -> AsyncIterator[bytes | Resync]:
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
                await pubsub.subscribe(self.channel)
                self._connected = True
                delay = _FIRST_DELAY
                yield RESYNC
                while True:
                    message = await pubsub.get_message(timeout=self.health_check_seconds)
                    if message is None or message["type"] != "message":
                        continue
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
        with self._client_lock:
            reader, self._reader = self._reader, None
        if reader is not None:
            reader[0].close()
        loop_client = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if loop_client is not None:
            await loop_client.redis.aclose()


async def _close_quietly(pubsub: aioredis.client.PubSub, client: aioredis.Redis) -> None:
    try:
        await pubsub.aclose()
        await client.aclose()
    except Exception:  # the connection is already broken; nothing to release
        logger.debug("notify: error closing a broken Redis connection", exc_info=True)
