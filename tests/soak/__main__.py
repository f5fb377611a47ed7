"""``python -m tests.soak [--duration 60] [--clients 200] ...``: see ``tests.soak``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.processes import RedisServer
from tests.soak.accounts import KINDS, LOGOUT_PATH, Account, Revoker, make_accounts
from tests.soak.check import Revocation, judge
from tests.soak.client import Client, Stats
from tests.soak.cluster import Cluster, Database
from tests.soak.sse_client import SSEClient
from tests.soak.websocket_client import WebSocketClient

# Readable by everyone under the default policy, which the servers run.
CHANNELS = [f"public:soak-{n}" for n in range(8)]
# As in issue 16's reproduction: six clients hold a user's session cookies and keep
# reopening the user's channel; here in two browsers (two sessions) of three clients.
CLIENTS_PER_USER = 6
BROWSERS_PER_USER = 2
# Where notify.revoke stores revocations: reserved, no client streams it.
REVOCATION_CHANNEL = "notify.revoke"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of publishing")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument(
        "--websocket-share",
        type=share,
        default=1 / 3,
        help="the share of the clients on the WebSocket transport, from 0 to 1 (the others "
        "are on SSE; default: a third)",
    )
    parser.add_argument("--rate", type=float, default=30.0, help="events/s per publisher")
    parser.add_argument("--burst-size", type=int, default=5000)
    parser.add_argument(
        "--stall", type=float, default=30.0, help="seconds one client stops reading"
    )
    parser.add_argument("--redis-down", type=float, default=5.0, help="seconds Redis is killed")
    parser.add_argument(
        "--mean-lifetime", type=float, default=5.0, help="mean seconds before a client drops"
    )
    parser.add_argument(
        "--users",
        type=int,
        default=8,
        help=f"logged-in users, with {CLIENTS_PER_USER} clients each on their channel "
        "user:<pk> (among --clients), whose streams are revoked during the run",
    )
    parser.add_argument(
        "--user-mean-lifetime",
        type=float,
        default=1.0,
        help="mean seconds before a logged-in client drops: they keep reopening",
    )
    parser.add_argument(
        "--revocation-interval",
        type=float,
        default=1.0,
        help="mean seconds between two revocations (logouts, notify.revoke, password changes)",
    )
    parser.add_argument(
        "--settle", type=float, default=90.0, help="seconds allowed to catch up at the end"
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or None,
        help="a PostgreSQL server to create the soak's database on (default: $DATABASE_URL; "
        "none: a SQLite file)",
    )
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


def share(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a share: give a number from 0 to 1")
    return value


@dataclass
class Faults:
    done: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    database = Database(args.database_url)
    redis = RedisServer()
    # Short reconnection times and heartbeats, so that a short run sees many of both. The
    # default policy (the test settings open every channel): it reads the session of every
    # logged-in client's stream, which a revocation must then end or refuse.
    notify = {
        "RETRY_MS": 1000,
        "HEARTBEAT_SECONDS": 5,
        "AUTHORIZE": "notify.authorization.default_policy",
    }
    cluster = Cluster(database, redis, notify)
    websockets = round(args.clients * args.websocket_share)
    print(
        f"soak: seed {seed}, {args.duration:g} s, {args.clients} clients "
        f"({args.clients - websockets} SSE, {websockets} WebSocket; {args.users} logged-in "
        f"users), database {'PostgreSQL' if database.url else 'SQLite'}",
        flush=True,
    )
    try:
        database.create()
        redis.start()
        cluster.migrate()
        cluster.configure_django()
        cluster.servers = [cluster.start_server(), cluster.start_server()]
        ports = " and ".join(str(server.port) for server in cluster.servers)
        print(f"soak: servers 1 and 2 on ports {ports}", flush=True)
        return asyncio.run(soak(args, cluster, random.Random(seed)))
    finally:
        cluster.stop()
        redis.stop()
        database.drop()


def make_clients(
    args: argparse.Namespace,
    servers: list[tuple[str, int]],
    stats: dict[str, Stats],
    accounts: list[Account],
    rng: random.Random,
) -> list[Client]:
    """The SSE clients, then the WebSocket ones. The last of each transport stops reading
    for a while; it listens to every public channel, so that its buffers fill fastest.
    ``CLIENTS_PER_USER`` clients per account, chosen at random among the others (so on both
    transports), are logged in: they listen to the user's channel and up to two public
    ones, and keep reopening (``--user-mean-lifetime``)."""
    websockets = round(args.clients * args.websocket_share)
    kinds: list[type[Client]] = [SSEClient] * (args.clients - websockets)
    kinds += [WebSocketClient] * websockets
    stalls = [n + 1 == len(kinds) or kinds[n + 1] is not kind for n, kind in enumerate(kinds)]
    per_browser = CLIENTS_PER_USER // BROWSERS_PER_USER
    seats = [b for account in accounts for b in account.browsers for _ in range(per_browser)]
    others = [number for number in range(len(kinds)) if not stalls[number]]
    browsers = dict(zip(rng.sample(others, min(len(seats), len(others))), seats, strict=False))
    clients = []
    for number, kind in enumerate(kinds):
        browser = browsers.get(number)
        if stalls[number]:
            channels = CHANNELS
        elif browser is not None:
            channels = [browser.account.channel, *rng.sample(CHANNELS, rng.randint(0, 2))]
        else:
            channels = rng.sample(CHANNELS, rng.randint(1, 3))
        client = kind(
            number,
            servers,
            channels,
            random.Random(rng.random()),
            stats[kind.transport],
            args.mean_lifetime if browser is None else args.user_mean_lifetime,
            browser,
        )
        client.stalls = stalls[number]
        clients.append(client)
    return clients


async def soak(args: argparse.Namespace, cluster: Cluster, rng: random.Random) -> int:
    loop = asyncio.get_running_loop()
    stats = {SSEClient.transport: Stats(), WebSocketClient.transport: Stats()}
    servers = [("127.0.0.1", server.port) for server in cluster.servers]
    accounts = await make_accounts(args.users, BROWSERS_PER_USER)
    clients = make_clients(args, servers, stats, accounts, rng)
    stallers = [client for client in clients if client.stalls]
    tasks = [loop.create_task(client.run()) for client in clients]
    deadline = time.monotonic() + 30
    while not all(client.received.first_cursor is not None for client in clients):
        if time.monotonic() > deadline:
            print("soak: some clients could not open a stream", flush=True)
            return 2
        await asyncio.sleep(0.1)

    duration = args.duration
    started = loop.time()
    for staller in stallers:
        staller.stall = (started + 0.1 * duration, min(args.stall, 0.6 * duration))
    channels = CHANNELS + [account.channel for account in accounts]
    publishers = [
        cluster.start_publisher(
            seed, args.rate, duration, [duration * (0.2 + 0.3 * seed)], args.burst_size, channels
        )
        for seed in range(3)
    ]
    faults = Faults()
    fault_task = loop.create_task(run_faults(args, cluster, faults, started))
    revoker = Revoker(
        accounts,
        [port for _, port in servers],
        random.Random(rng.random()),
        args.revocation_interval,
    )
    revoking = loop.create_task(revoker.run(started + duration)) if accounts else None
    progress = loop.create_task(report_progress(stats, faults, revoker, started))

    outputs = await asyncio.gather(*(asyncio.to_thread(p.communicate) for p in publishers))
    await fault_task
    if revoking is not None:
        await revoking
    failed = [seed for seed, p in enumerate(publishers) if p.returncode != 0]
    if failed:
        print(f"soak: publishers {failed} failed: see their logs", flush=True)
    published = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs if out.strip()]

    stored = await asyncio.to_thread(stored_events)
    newest: dict[str, int] = {}
    for event_id, channel in stored.items():
        newest[channel] = max(newest.get(channel, 0), event_id)
    for client in clients:
        client.churn = False
        client.target = max((newest.get(c, 0) for c in client.received.channels), default=0)
        client.check_done()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(
            asyncio.gather(*(client.done.wait() for client in clients)), args.settle
        )
    behind = [client for client in clients if not client.done.is_set()]
    waiting = {client.number: waiting_in(tasks[client.number]) for client in behind[:5]}
    progress.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    revocations = revoker.revocations
    verdict = judge((client.received for client in clients), stored, revocations)
    elapsed = loop.time() - started
    committed = sum(p["committed"] for p in published)
    rolled_back = sum(p["rolled_back"] for p in published)
    revocation_events = sum(1 for channel in stored.values() if channel == REVOCATION_CHANNEL)
    print(
        f"soak: {elapsed:.1f} s; {len(stored)} events stored ({committed} committed by the "
        f"publishers, {rolled_back} rolled back; {revocation_events} revocations)",
        flush=True,
    )
    if accounts:
        report_revocations(revoker, len(accounts))
    for transport, transport_stats in stats.items():
        group = [client for client in clients if client.transport == transport]
        if group:
            report_transport(transport, group, transport_stats, stored, revocations)
    print(f"soak: faults: {'; '.join(faults.done)}", flush=True)
    for staller in stallers:
        print(
            f"soak: the stalled {staller.transport} client's connection: "
            f"{staller.stalled_connection_ended}",
            flush=True,
        )
        for line in staller.trace:
            print(f"soak:   {line}", flush=True)
    problems = list(faults.errors) + revoker.failures
    if revoker.unstored:
        problems.append(
            f"{len(revoker.unstored)} of {len(revocations)} revocations stored no revocation "
            f"event: {'; '.join(revoker.unstored[:3])}"
        )
    if behind:
        problems.append(f"{len(behind)} clients had not caught up after {args.settle:g} s")
        for client in behind[:5]:
            problems.append(
                f"client {client.number} ({sorted(client.received.channels)}) at "
                f"{client.position} of {client.target}: {client.state}, waiting in "
                f"{waiting[client.number]}"
            )
    for transport, transport_stats in stats.items():
        if transport_stats.resets:
            resets = transport_stats.resets
            problems.append(f"{len(resets)} notify.reset ({transport}): {resets[:3]}")
        if transport_stats.unexpected:
            unexpected = transport_stats.unexpected
            problems.append(f"{len(unexpected)} unexpected ({transport}): {unexpected[:3]}")
    if gave_up := [client for client in clients if client.gave_up]:
        problems.append(
            f"{len(gave_up)} clients gave up: "
            + "; ".join(f"client {c.number} after {c.gave_up}" for c in gave_up[:5])
        )
    if failed:
        problems.append(f"publishers {failed} failed")
    if tracebacks := cluster.tracebacks():
        problems.append(f"tracebacks in server logs: {tracebacks}")
    if verdict.leaks:
        events = sum(leak.events for leak in verdict.leaks.values())
        print(
            f"soak: foreign after a revocation: {events} events after {len(verdict.leaks)} "
            "revocations, on connections they ended:",
            flush=True,
        )
        for revocation, leak in sorted(verdict.leaks.items(), key=lambda item: item[0].started):
            print(
                f"soak:   {describe_revocation(revocation)}: {leak.events} events "
                f"({leak.private} of user {revocation.user}'s channel) on "
                f"{leak.connections} connection{'' if leak.connections == 1 else 's'}",
                flush=True,
            )
    for kind, examples in verdict.examples.items():
        print(f"soak: {kind}: {'; '.join(examples)}", flush=True)
    if not verdict.clean:
        # The connections of the first client with a problem, to see where it went wrong.
        number = int(next(iter(verdict.examples.values()))[0].split()[1].rstrip(":"))
        print(f"soak: client {number}'s last connections:", flush=True)
        for line in clients[number].trace:
            print(f"soak:   {line}", flush=True)
        if (user := clients[number].received.user) is not None:
            print(f"soak: user {user}'s revocations:", flush=True)
            for revocation in revocations:
                if revocation.user == user:
                    print(f"soak:   {describe_revocation(revocation)}", flush=True)
    for problem in problems:
        print(f"soak: problem: {problem}", flush=True)
    print(verdict.line(), flush=True)
    return 0 if verdict.clean and not problems else 1


def report_revocations(revoker: Revoker, users: int) -> None:
    revocations = revoker.revocations
    kinds = {kind: sum(1 for r in revocations if r.kind == kind) for kind in KINDS}
    print(
        f"soak: revocations of {users} users: {kinds['logout']} logouts (POST {LOGOUT_PATH} "
        f"on the servers), {kinds['revoke']} notify.revoke, {kinds['password change']} "
        f"password changes; {revoker.during_opening} of {len(revocations)} began while a "
        f"stream of their user was opening; {len(revocations) - len(revoker.unstored)} "
        "stored a revocation event",
        flush=True,
    )
    if revocations:
        took = sorted(r.finished - r.started for r in revocations)
        print(
            f"soak: revocations took {1000 * statistics.median(took):.0f} ms (median), "
            f"{took[-1]:.2f} s at most",
            flush=True,
        )


def describe_revocation(revocation: Revocation) -> str:
    ended = ", ".join(session[:8] + "…" for session in sorted(revocation.ended_sessions))
    return (
        f"{revocation.started:.2f} to {revocation.finished:.2f}: {revocation.kind} of user "
        f"{revocation.user}, revocation {revocation.event_id}"
        f"{f', ended {ended}' if ended else ''}"
    )


def report_transport(
    transport: str,
    clients: list[Client],
    stats: Stats,
    stored: dict[int, str],
    revocations: list[Revocation],
) -> None:
    """The summary of one transport's clients: their verdict, connections and endings, and
    what revocations did to its logged-in clients."""
    verdict = judge((client.received for client in clients), stored, revocations)
    print(f"soak: {transport}: {len(clients)} clients, {verdict.counts()}", flush=True)
    if logged_in := sum(1 for client in clients if client.browser is not None):
        print(
            f"soak: {transport}: {logged_in} logged-in clients: "
            f"{verdict.revoked_connections} connections revoked (streaming at a revocation "
            f"of their user, or with a session it ended), {stats.refused_sessions} refused "
            f"for an ended session, {stats.logins} logins again",
            flush=True,
        )
    print(
        f"soak: {transport}: {stats.connections} connections, {stats.reconnects} reconnection "
        f"attempts ({stats.refused} refused), statuses {dict(sorted(stats.statuses.items()))}",
        flush=True,
    )
    print(f"soak: {transport}: endings {dict(sorted(stats.endings.items()))}", flush=True)


def waiting_in(task: asyncio.Task[None]) -> str:
    """Where ``task`` waits: the innermost frames of its chain of awaited coroutines."""
    if task.done():
        return f"nothing: it ended ({task.exception()!r})"
    frames = []
    awaited: Any = task.get_coro()
    while (frame := getattr(awaited, "cr_frame", None)) is not None:
        code = frame.f_code
        frames.append(f"{code.co_name} ({os.path.basename(code.co_filename)}:{frame.f_lineno})")
        awaited = awaited.cr_await
    return " > ".join(frames[-4:])


def stored_events() -> dict[int, str]:
    from django.db import connection

    from notify.models import Event

    try:
        return dict(Event.objects.values_list("id", "channel"))
    finally:
        connection.close()


async def run_faults(
    args: argparse.Namespace, cluster: Cluster, faults: Faults, started: float
) -> None:
    """The fault schedule, as fractions of the run's duration."""
    loop = asyncio.get_running_loop()
    redis = cluster.redis

    def redis_restart() -> str:
        redis.restart()
        return "Redis restarted"

    def redis_kill() -> str:
        assert redis.process is not None
        redis.process.kill()
        redis.process.wait()
        redis.process = None
        time.sleep(args.redis_down)
        redis.start()
        return f"Redis killed for {args.redis_down:g} s"

    def server_kill() -> str:
        cluster.servers[0].process.kill()
        cluster.servers[0].process.wait()
        took = cluster.restart(0)
        return f"server 1 killed (SIGKILL), back in {took:.1f} s"

    def server_term() -> str:
        process = cluster.servers[1].process
        process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            faults.errors.append("server 2 did not exit within 30 s of SIGTERM")
        exited = time.monotonic() - stopping
        took = cluster.restart(1)
        return f"server 2 stopped (SIGTERM, exited in {exited:.1f} s), back in {took:.1f} s"

    schedule: list[tuple[float, Callable[[], str]]] = [
        (0.15, redis_restart),
        (0.30, redis_kill),
        (0.50, server_kill),
        (0.70, server_term),
    ]
    for fraction, fault in schedule:
        await asyncio.sleep(max(0.0, started + fraction * args.duration - loop.time()))
        begun = loop.time()
        try:
            done = await asyncio.to_thread(fault)
            # Loop times, as in the clients' traces and the revocations.
            faults.done.append(f"{done} ({begun:.2f} to {loop.time():.2f})")
        except Exception as exc:  # reported: the run fails
            faults.errors.append(f"{fault.__name__}: {exc!r}")


async def report_progress(
    stats: dict[str, Stats], faults: Faults, revoker: Revoker, started: float
) -> None:
    loop = asyncio.get_running_loop()

    def deliveries() -> int:
        return sum(transport.deliveries for transport in stats.values())

    last, last_time = deliveries(), loop.time()
    while True:
        await asyncio.sleep(5.0)
        now = loop.time()
        rate = (deliveries() - last) / (now - last_time)
        last, last_time = deliveries(), now
        streams = " + ".join(
            f"{transport.open_streams} {name}" for name, transport in stats.items()
        )
        print(
            f"soak: {now - started:6.1f} s  {rate:8.0f} deliveries/s  "
            f"{streams} open streams  {len(faults.done)} faults, "
            f"{len(revoker.revocations)} revocations so far",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
