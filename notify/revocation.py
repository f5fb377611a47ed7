"""Closing a user's open streams in every server process: ``notify.revoke``.

A stream is authorized once, when it opens. When what a user may read changes, ``revoke``
closes their open streams, and each client reconnects to be authorized again.

A revocation is stored in the event log (``notify.control``). Every hub meets it there at
its place in id order, so:

- a stream whose authorization began before the revocation was stored is closed before it
  is handed any event stored after it, even one that was still being let in (``Ticket``);
- a stream authorized after it saw the change (the revocation is stored once the change is
  durable);
- a revocation is never lost to a broker that is down or still subscribing: hubs read the
  event log from the database when Redis cannot bring it.

notify revokes by itself when the default policy's answers, or Django's sessions, may
shrink: a logout or a login in the same browser ends the streams of the session it ended; a
new password (any change of the session auth hash, which also ends the user's other
sessions), an account made inactive or no longer staff, removal from a group, a group
renamed or deleted, a user deleted end all of the user's streams. Projects call ``revoke``
for anything else their policy reads; changes made without signals (``QuerySet.update``,
raw SQL) must call it too.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any

from django import db
from django.apps import apps
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db import connections, router, transaction
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_init, post_save, pre_delete

from notify import api
from notify.authorization import session_digest
from notify.control import REVOCATION
from notify.models import Event
from notify.sse import encode_json

logger = logging.getLogger("notify.revocation")

# Users named by one stored revocation: revoking a group of 100k users stores 100 rows, none
# of them large.
USERS_PER_ROW = 1000


def revoke(user: Any) -> Event:
    """Close every open stream of ``user`` (a saved Django user) in every server process,
    within moments, and any stream of theirs being let in at that moment. The clients
    reconnect, to be authorized again.

    The revocation is stored in the event log in the caller's transaction (a rollback
    revokes nothing): call it in the transaction that changes what the user may read, or
    after it commits, never before. Returns the stored revocation, whose id places it among
    the events: no stream of the user authorized before it gets an event with a higher id.

    Only streams whose user was looked up are found: under the ``allow_all`` policy a
    stream reads no session, so it has no user to revoke."""
    if user.pk is None:
        raise ValueError("cannot revoke the streams of an unsaved user")
    return revoke_users([user.pk])[0]


def revoke_users(pks: Iterable[Any]) -> list[Event]:
    """``revoke`` for the users whose pks are ``pks``, in as few rows as ``USERS_PER_ROW``
    allows. Returns the stored revocations (none for no pks)."""
    return _store("users", [str(pk) for pk in pks])


def revoke_sessions(digests: Iterable[str]) -> list[Event]:
    """End the streams let in by the sessions named by ``digests``
    (``notify.authorization.session_digest``), as ``revoke`` ends a user's."""
    return _store("sessions", list(digests))


def _store(kind: str, names: list[str]) -> list[Event]:
    names = list(dict.fromkeys(names))
    rows = [names[start : start + USERS_PER_ROW] for start in range(0, len(names), USERS_PER_ROW)]
    return api.publish_many([_revocation({kind: row}) for row in rows])


def _revocation(data: dict[str, list[str]]) -> api.Prepared:
    # Built here, not by ``api.prepare``: the channel and type are reserved to notify, and
    # a list of pks is not a payload to hold to MAX_PAYLOAD_BYTES.
    return api.Prepared(REVOCATION, REVOCATION, data, encode_json(data))


# -- what notify revokes by itself ---------------------------------------------------------
#
# A change made by Django (a session deleted, a user or a group saved) is revoked once it is
# durable: right away when it is already (a cache session), else once its transaction
# commits; and always outside the caller's transaction. Stored inside it, a revocation would
# hold every publisher of the site (the ordering lock) until that transaction ends, could
# deadlock with one that published and then touches the same user, and would be rolled back
# with a transaction whose change (a cache session deleted) was not. Streams let in between
# the change and the revocation read the changed state; those let in before meet the
# revocation (``Ticket``). Events stored in that moment may still reach them.


def _once_durable(
    aliases: Iterable[str], users: Iterable[Any] = (), sessions: Iterable[str] = ()
) -> None:
    """Revoke ``users`` (pks) and ``sessions`` (digests) for a change made on the databases
    ``aliases`` (none: a change durable already), once it commits."""
    users, sessions = [str(pk) for pk in users], list(sessions)
    if not users and not sessions:
        return
    pending = [alias for alias in dict.fromkeys(aliases) if connections[alias].in_atomic_block]

    def then(index: int) -> None:
        if index < len(pending):
            # Once every one of them has committed (run at once when, meanwhile, no
            # transaction is open any more on that database).
            transaction.on_commit(lambda: then(index + 1), using=pending[index])
        else:
            _outside_transactions(users, sessions)

    then(0)


def _outside_transactions(users: list[str], sessions: list[str]) -> None:
    if not connections[router.db_for_write(Event)].in_atomic_block:
        _store_both(users, sessions)
        return
    # The caller's transaction on the events' database is not the change's (which is
    # durable): store it on a connection of its own, from a thread, without waiting, since
    # that transaction may hold the ordering lock the thread needs until it ends.
    threading.Thread(
        target=_store_in_thread, args=(users, sessions), name="notify-revocation", daemon=True
    ).start()


def _store_both(users: list[str], sessions: list[str]) -> None:
    if users:
        revoke_users(users)
    if sessions:
        revoke_sessions(sessions)


def _store_in_thread(users: list[str], sessions: list[str]) -> None:
    try:
        _store_both(users, sessions)
    except Exception:
        logger.exception("notify: could not store a revocation; the streams stay open")
    finally:
        db.connections.close_all()


def _session_alias(session: Any) -> list[str]:
    """The database a session store writes to: none for a store outside any transaction
    (cache, file, signed cookie)."""
    model = getattr(session, "model", None)  # database-backed sessions
    return [] if model is None else [router.db_for_write(model)]


def _on_logout(*, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    session = getattr(request, "session", None)
    if user is None or session is None or not session.session_key:
        return  # nobody was logged in to the session
    # logout() sends this signal before it flushes the session: delete the stored session
    # first, so that a stream let in after the revocation finds nobody logged in. It ends
    # this session's streams; the user's other sessions go on.
    digest = session_digest(session.session_key)
    session.delete()
    _once_durable(_session_alias(session), sessions=[digest])


def _on_login(*, request: Any = None, **kwargs: Any) -> None:
    # login() deleted the session the browser came with (flushed for another user, or
    # moved to a new key): its streams, maybe another user's, end. (No signal says so.)
    cookies = getattr(request, "COOKIES", {})
    previous = cookies.get(settings.SESSION_COOKIE_NAME)
    session = getattr(request, "session", None)
    if previous and session is not None and previous != session.session_key:
        _once_durable(_session_alias(session), sessions=[session_digest(previous)])


# What the default policy, and Django's session check, read of a user: a change that may
# narrow what the user may read revokes their streams.
_USER_FIELDS = ("password", "is_active", "is_staff")
_MISSING = object()


def _user_state(user: Model) -> tuple[Any, ...]:
    # Read from __dict__, so that a deferred field is never loaded for this.
    values = user.__dict__
    state = tuple(values.get(name, _MISSING) for name in _USER_FIELDS)
    if type(user).get_session_auth_hash is not _default_session_auth_hash():
        # A custom session auth hash may read anything: compare it as well.
        state += (user.get_session_auth_hash(),)
    return state


def _default_session_auth_hash() -> Any:
    from django.contrib.auth.base_user import AbstractBaseUser

    return AbstractBaseUser.get_session_auth_hash


def _written(before: tuple[Any, ...], after: tuple[Any, ...], fields: Any) -> tuple[Any, ...]:
    """The state as stored once a save of ``fields`` (None: all) wrote it: a field the save
    did not write keeps its stored value, whatever the instance holds."""
    if fields is None:
        return after
    names = (*_USER_FIELDS, "hash")
    return tuple(
        new if name in fields or name == "hash" else old
        for name, old, new in zip(names, before, after, strict=False)
    )


def _narrowed(before: tuple[Any, ...], after: tuple[Any, ...]) -> bool:
    for name, old, new in zip(_USER_FIELDS, before, after, strict=False):
        if new is _MISSING or old == new:
            continue
        if old is _MISSING or name == "password":
            return True  # loaded deferred and set since, or a new password
        if old and not new:
            return True
    return len(before) > len(_USER_FIELDS) and before[-1] != after[-1]


def _on_user_init(*, instance: Model, **kwargs: Any) -> None:
    instance.__dict__["_notify_state"] = _user_state(instance)


def _on_user_save(
    *, instance: Model, created: bool, update_fields: Any, using: str, **kwargs: Any
) -> None:
    before = instance.__dict__.get("_notify_state")
    if before is None:
        instance.__dict__["_notify_state"] = _user_state(instance)
        return
    after = _written(before, _user_state(instance), update_fields)
    instance.__dict__["_notify_state"] = after
    if not created and _narrowed(before, after):
        _once_durable([using], users=[instance.pk])


def _on_user_delete(*, instance: Model, using: str, **kwargs: Any) -> None:
    _once_durable([using], users=[instance.pk])


def _on_membership(
    *, instance: Model, action: str, reverse: bool, pk_set: Any, using: str, **kwargs: Any
) -> None:
    # user.groups.remove(g) / .clear(), or group.user_set.remove(u) / .clear().
    if action == "post_remove":
        _once_durable([using], users=pk_set if reverse else [instance.pk])
    elif action == "pre_clear":
        users = instance.user_set.values_list("pk", flat=True) if reverse else [instance.pk]
        _once_durable([using], users=users)


def _on_group_init(*, instance: Model, **kwargs: Any) -> None:
    instance.__dict__["_notify_name"] = instance.__dict__.get("name", _MISSING)


def _on_group_save(*, instance: Model, created: bool, using: str, **kwargs: Any) -> None:
    before = instance.__dict__.get("_notify_name", _MISSING)
    name = instance.__dict__.get("name", _MISSING)
    instance.__dict__["_notify_name"] = name
    if not created and before != name:
        # Its members read "group:<old name>" no more.
        _once_durable([using], users=instance.user_set.values_list("pk", flat=True))


def _on_group_delete(*, instance: Model, using: str, **kwargs: Any) -> None:
    _once_durable([using], users=instance.user_set.values_list("pk", flat=True))


def connect() -> None:
    """Connect the receivers above (from ``NotifyConfig.ready``)."""
    user_logged_out.connect(_on_logout, dispatch_uid="notify.revocation.logout")
    user_logged_in.connect(_on_login, dispatch_uid="notify.revocation.login")
    if not apps.is_installed("django.contrib.auth"):
        return
    user_model = get_user_model()
    post_init.connect(_on_user_init, sender=user_model, dispatch_uid="notify.user.init")
    post_save.connect(_on_user_save, sender=user_model, dispatch_uid="notify.user.save")
    pre_delete.connect(_on_user_delete, sender=user_model, dispatch_uid="notify.user.delete")
    groups = getattr(user_model, "groups", None)
    if groups is None:  # a custom user model without PermissionsMixin
        return
    m2m_changed.connect(_on_membership, sender=groups.through, dispatch_uid="notify.groups")
    group_model = groups.field.related_model
    post_init.connect(_on_group_init, sender=group_model, dispatch_uid="notify.group.init")
    post_save.connect(_on_group_save, sender=group_model, dispatch_uid="notify.group.save")
    pre_delete.connect(_on_group_delete, sender=group_model, dispatch_uid="notify.group.delete")
