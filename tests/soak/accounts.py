"""The soak's logged-in users, their browsers, and the revoker that ends their streams.

Each user (a Django user in the soak's database) has two browsers; each browser holds one
session cookie, which every client (tab) of that browser sends, on SSE and WebSocket alike.
The revoker, while the run lasts, picks a user, waits until one of that user's streams is
opening (as in issue 16's reproduction, where the revocation raced streams being reopened),
and then:

- logs one browser out with a real ``POST /accounts/logout/`` to either server (Django's own
  ``LogoutView``, so through the middleware, ``django.contrib.auth.logout`` and its
  ``user_logged_out`` signal, in a server process, beside that process's streams);
- or calls ``notify.revoke(user)``: the session stays valid, the streams reconnect and are
  authorized again;
- or changes the user's password, which ends every session of the user.

Each is recorded as a ``check.Revocation``, with the id of the revocation event it stored.

The browser keeps a logged-out session's cookie, as a stolen cookie or a tab that missed the
logout would: every later connection with it must be refused. The first client refused then
logs its browser in again, and the browser's clients resume with the new cookie. Logging in
happens in this process, as ``django.test.Client.force_login`` does (a new session row, the
real cookie): a login over HTTP would hash a password on a server for every logout, which
is not what is under test.

Django's side (the database) runs in a thread: ``in_django``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from tests.soak.check import Revocation

Result = TypeVar("Result")

LOGOUT_PATH = "/accounts/logout/"
# What the revoker does, and how often, relative to each other.
KINDS = {"logout": 6, "revoke": 3, "password change": 1}
# How long the revoker waits for one of the user's streams to be opening.
OPENING_WAIT = 2.0
# How long a logout keeps trying the servers (one may be down, or restarting).
LOGOUT_TIMEOUT = 30.0


async def in_django(function: Callable[..., Result], *args: object) -> Result:
    """``function(*args)`` in a thread, with its database connection closed after it."""

    def call() -> Result:
        from django.db import connection

        try:
            return function(*args)
        finally:
            connection.close()

    return await asyncio.to_thread(call)


def create_users(count: int) -> list[str]:
    """``count`` users (pks), with no usable password: the soak logs them in by session."""
    from django.contrib.auth.models import User

    return [str(User.objects.create_user(f"soak-{n}").pk) for n in range(count)]


def log_in(pk: str) -> str:
    """A new session of user ``pk``: its cookie's value."""
    from django.conf import settings
    from django.contrib.auth.models import User
    from django.test import Client

    client = Client()
    client.force_login(User.objects.get(pk=pk))
    return client.cookies[settings.SESSION_COOKIE_NAME].value


def revoke(pk: str) -> None:
    from django.contrib.auth.models import User

    import notify

    notify.revoke(User.objects.get(pk=pk))


def change_password(pk: str) -> None:
    """A new password for user ``pk``, as an administrator sets it. An unusable one costs no
    hashing, and changes the session-auth hash all the same (what ends the sessions)."""
    from django.contrib.auth.models import User

    user = User.objects.get(pk=pk)
    user.set_unusable_password()
    user.save()


def revocations_since(mark: int, pk: str, sessions: frozenset[str]) -> tuple[int, list[int]]:
    """The newest stored id, and the ids above ``mark`` of the revocation events that name
    user ``pk`` or one of ``sessions`` (event log channel ``notify.revoke``, data
    ``{"users": [pk, ...]}`` or ``{"sessions": [digest, ...]}``: a logout revokes its
    session)."""
    from notify.authorization import session_digest
    from notify.models import Event

    digests = {session_digest(session) for session in sessions}

    newest = Event.objects.order_by("-id").values_list("id", flat=True).first() or 0
    found = [
        event_id
        for event_id, data in Event.objects.filter(
            channel="notify.revoke", id__gt=mark, id__lte=newest
        ).values_list("id", "data")
        if isinstance(data, dict)
        and (pk in data.get("users", ()) or digests & set(data.get("sessions", ())))
    ]
    return newest, found


@dataclass
class Account:
    """A logged-in user of the soak: its browsers, and its streams that are opening."""

    pk: str
    browsers: list[Browser] = field(default_factory=list)
    #: A login and a revocation of the same user never overlap, so that every session
    #: begins either before or after each revocation (and a password change ends exactly
    #: the sessions that began before it).
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Sessions that a revocation ended (from the moment it began).
    ended_sessions: set[str] = field(default_factory=set)
    #: The user's connections whose request is sent and whose stream has not started.
    opening: int = 0
    started_opening: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def channel(self) -> str:
        return f"user:{self.pk}"

    def opening_started(self) -> None:
        self.opening += 1
        self.started_opening.set()

    def opening_ended(self) -> None:
        self.opening -= 1

    async def an_opening(self) -> None:
        """Wait until one of the user's streams is opening (bound the wait with a timeout)."""
        if not self.opening:
            self.started_opening.clear()
            await self.started_opening.wait()


@dataclass
class Browser:
    """One browser of a user: the session cookie that all of its clients send."""

    account: Account
    number: int
    session: str

    async def log_in_again(self, refused: str) -> bool:
        """Log in again after a client was refused with the session ``refused``, unless
        another client of this browser did already. True when this call logged in."""
        async with self.account.lock:
            if self.session != refused:
                return False
            self.session = await in_django(log_in, self.account.pk)
            return True


async def make_accounts(users: int, browsers: int) -> list[Account]:
    """``users`` users, logged in with ``browsers`` browsers each."""
    accounts = [Account(pk) for pk in await in_django(create_users, users)]
    for account in accounts:
        for number in range(browsers):
            session = await in_django(log_in, account.pk)
            account.browsers.append(Browser(account, number, session))
    return accounts


@dataclass
class Revoker:
    """Revokes users' streams while the run lasts (see the module's docstring)."""

    accounts: list[Account]
    ports: list[int]
    rng: random.Random
    #: Mean seconds between two revocations.
    interval: float
    revocations: list[Revocation] = field(default_factory=list)
    #: How many revocations began while a stream of their user was opening.
    during_opening: int = 0
    #: Revocations that stored no revocation event, for the report.
    unstored: list[str] = field(default_factory=list)
    #: Revocations that failed, for the report.
    failures: list[str] = field(default_factory=list)
    #: The newest stored id after the last revocation: the next one's event is above it.
    mark: int = 0

    async def run(self, until: float) -> None:
        """Revoke until the loop time ``until``; the streams then settle."""
        loop = asyncio.get_running_loop()
        kinds, weights = list(KINDS), list(KINDS.values())
        while (due := loop.time() + self.rng.expovariate(1 / self.interval)) < until:
            await asyncio.sleep(due - loop.time())
            account = self.rng.choice(self.accounts)
            kind = self.rng.choices(kinds, weights)[0]
            browser = self.rng.choice(account.browsers)
            # A user whose streams are all refused or waiting opens none: then revoke anyway.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OPENING_WAIT):
                    await account.an_opening()
            try:
                await self.revoke(kind, account, browser)
            except Exception as exc:  # reported: the run fails
                self.failures.append(f"a {kind} of user {account.pk} failed: {exc!r}")

    async def revoke(self, kind: str, account: Account, browser: Browser) -> None:
        """One revocation of ``kind`` (a logout logs ``browser`` out), recorded with the id
        of the revocation event it stored."""
        loop = asyncio.get_running_loop()
        async with account.lock:
            if kind == "logout" and browser.session in account.ended_sessions:
                # Ended already (a password change) and not logged in again yet: Django's
                # logout then finds nobody logged in, and there is nothing to revoke.
                return
            if account.opening:
                self.during_opening += 1
            started = loop.time()
            if kind == "logout":
                ended = frozenset({browser.session})
            elif kind == "password change":
                ended = frozenset(b.session for b in account.browsers)
            else:
                ended = frozenset()
            # Before the revocation begins: a client refused from now on may be.
            account.ended_sessions |= ended
            if kind == "logout":
                await self.log_out(browser.session)
            elif kind == "password change":
                await in_django(change_password, account.pk)
            else:
                await in_django(revoke, account.pk)
        finished = loop.time()
        newest, found = await in_django(revocations_since, self.mark, account.pk, ended)
        self.mark = newest
        if not found:
            self.unstored.append(f"the {kind} of user {account.pk} at {started:.2f}")
        # Without a revocation event, the newest id once it returned bounds what may follow.
        event_id = min(found, default=newest)
        self.revocations.append(Revocation(kind, account.pk, event_id, started, finished, ended))

    async def log_out(self, session: str) -> None:
        """``POST /accounts/logout/`` with ``session``, to either server, until one answers
        (one may be down for a fault)."""
        from django.conf import settings
        from django.utils.crypto import get_random_string

        # The CSRF token a page of the site would hold; a token of the cookie's form is
        # all Django's check compares.
        token = get_random_string(32)
        headers = {
            "Cookie": f"{settings.SESSION_COOKIE_NAME}={session}; "
            f"{settings.CSRF_COOKIE_NAME}={token}",
            "X-CSRFToken": token,
        }
        loop = asyncio.get_running_loop()
        deadline = loop.time() + LOGOUT_TIMEOUT
        ports = self.rng.sample(self.ports, len(self.ports))
        while True:
            try:
                status = await post(ports[0], LOGOUT_PATH, headers)
            except (OSError, EOFError, TimeoutError):
                if loop.time() > deadline:
                    raise
                ports.reverse()
                await asyncio.sleep(0.2)
                continue
            if status != 302:
                raise RuntimeError(f"the logout on port {ports[0]} answered {status}")
            return


async def post(port: int, path: str, headers: dict[str, str]) -> int:
    """An empty ``POST`` to the server on ``port``: the status of its answer. Raises OSError
    or EOFError when the connection failed, TimeoutError after 10 s."""
    async with asyncio.timeout(10):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            lines = [
                f"POST {path} HTTP/1.1",
                f"Host: 127.0.0.1:{port}",
                "Content-Length: 0",
                "Connection: close",
                *(f"{name}: {value}" for name, value in headers.items()),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
            head = await reader.readuntil(b"\r\n\r\n")
            return int(head.split(b" ", 2)[1])
        finally:
            writer.close()
