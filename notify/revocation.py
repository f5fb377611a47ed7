"""Closing a user's open streams in every server process: ``notify.revoke``.

A stream is authorized once, when it opens. When what a user may read changes, ``revoke``
closes their open streams, and each client reconnects to be authorized again.

A revocation is stored in the event log (``notify.control``), in the caller's transaction,
after the change it follows. Every hub meets it there at its place in id order, so:

- a stream whose authorization began before the revocation was stored is closed before it
  is handed any event stored after it, even one that was still being let in (``Ticket``);
- a stream authorized after it saw the change (the revocation commits with or after it);
- a revocation is never lost to a broker that is down or still subscribing: hubs read the
  event log from the database when Redis cannot bring it.

notify revokes by itself when the default policy's answers may shrink: logging out, a new
password (any change of the session auth hash, which also ends the user's other sessions),
an account made inactive or no longer staff, removal from a group, a group renamed or
deleted, a user deleted. Projects call ``revoke`` for anything else their policy reads.
Changes made without signals (``QuerySet.update``, raw SQL) must call it too.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.apps import apps
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import connections, router, transaction
from django.db.models import Model
from django.db.models.signals import m2m_changed, post_init, post_save, pre_delete

from notify import api
from notify.control import REVOCATION
from notify.models import Event
from notify.sse import encode_json

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
    users = [str(pk) for pk in dict.fromkeys(pks)]
    rows = [users[start : start + USERS_PER_ROW] for start in range(0, len(users), USERS_PER_ROW)]
    return api.publish_many([_revocation(row) for row in rows])


def _revocation(users: list[str]) -> api.Prepared:
    # Built here, not by ``api.prepare``: the channel and type are reserved to notify, and
    # a list of pks is not a payload to hold to MAX_PAYLOAD_BYTES.
    data = {"users": users}
    return api.Prepared(REVOCATION, REVOCATION, data, encode_json(data))


def _revoke_after(aliases: Iterable[str], pks: Iterable[Any]) -> None:
    """Revoke ``pks`` for a change made on the databases ``aliases``: in the same
    transaction when events are stored there too; otherwise once the change commits, so
    that no stream authorized between the revocation and the change can miss both."""
    pks = list(pks)
    if not pks:
        return
    events = router.db_for_write(Event)
    pending = [alias for alias in dict.fromkeys(aliases) if alias != events]
    pending = [alias for alias in pending if connections[alias].in_atomic_block]
    if pending:
        # Once every one of them has committed (nested on_commit runs at once when no
        # transaction is open any more).
        def then(index: int) -> None:
            if index == len(pending):
                revoke_users(pks)
            else:
                transaction.on_commit(lambda: then(index + 1), using=pending[index])

        then(0)
    else:
        revoke_users(pks)


# -- what notify revokes by itself ---------------------------------------------------------


def _on_logout(*, request: Any = None, user: Any = None, **kwargs: Any) -> None:
    if user is None:  # nobody was logged in to the session
        return
    # logout() sends this signal before it flushes the session: delete the stored session
    # first, so that a stream authorized after the revocation finds nobody logged in.
    session = getattr(request, "session", None)
    aliases = [router.db_for_write(type(user))]
    if session is not None and session.session_key:
        session.delete()
        model = getattr(session, "model", None)  # database-backed sessions
        if model is not None:
            aliases.append(router.db_for_write(model))
    _revoke_after(aliases, [user.pk])


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


def _narrowed(before: tuple[Any, ...], after: tuple[Any, ...], fields: Any) -> bool:
    for name, old, new in zip(_USER_FIELDS, before, after, strict=False):
        if fields is not None and name not in fields:
            continue  # not written by this save
        if new is _MISSING:
            continue
        if old is _MISSING:
            return True  # loaded deferred and set since: it may have changed
        if name == "password" and old != new:
            return True
        if name != "password" and old and not new:
            return True
    return len(before) > len(_USER_FIELDS) and before[-1] != after[-1]


def _on_user_init(*, instance: Model, **kwargs: Any) -> None:
    instance.__dict__["_notify_state"] = _user_state(instance)


def _on_user_save(
    *, instance: Model, created: bool, update_fields: Any, using: str, **kwargs: Any
) -> None:
    after = _user_state(instance)
    before = instance.__dict__.get("_notify_state")
    instance.__dict__["_notify_state"] = after
    if created or before is None:
        return
    if _narrowed(before, after, update_fields):
        _revoke_after([using], [instance.pk])


def _on_user_delete(*, instance: Model, using: str, **kwargs: Any) -> None:
    _revoke_after([using], [instance.pk])


def _on_membership(
    *, instance: Model, action: str, reverse: bool, pk_set: Any, using: str, **kwargs: Any
) -> None:
    # user.groups.remove(g) / .clear(), or group.user_set.remove(u) / .clear().
    if action == "post_remove":
        _revoke_after([using], pk_set if reverse else [instance.pk])
    elif action == "pre_clear":
        users = instance.user_set.values_list("pk", flat=True) if reverse else [instance.pk]
        _revoke_after([using], users)


def _on_group_init(*, instance: Model, **kwargs: Any) -> None:
    instance.__dict__["_notify_name"] = instance.__dict__.get("name", _MISSING)


def _on_group_save(*, instance: Model, created: bool, using: str, **kwargs: Any) -> None:
    before = instance.__dict__.get("_notify_name", _MISSING)
    name = instance.__dict__.get("name", _MISSING)
    instance.__dict__["_notify_name"] = name
    if not created and before != name:
        # Its members read "group:<old name>" no more.
        _revoke_after([using], instance.user_set.values_list("pk", flat=True))


def _on_group_delete(*, instance: Model, using: str, **kwargs: Any) -> None:
    _revoke_after([using], list(instance.user_set.values_list("pk", flat=True)))


def connect() -> None:
    """Connect the receivers above (from ``NotifyConfig.ready``)."""
    user_logged_out.connect(_on_logout, dispatch_uid="notify.revocation.logout")
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
