"""The database router of a project with a read replica (Django's documentation's
primary/replica example): reads from ``replica``, writes to ``default``."""

from __future__ import annotations

from typing import Any


class ReplicaRouter:
    def db_for_read(self, model: type, **hints: Any) -> str:
        return "replica"

    def db_for_write(self, model: type, **hints: Any) -> str:
        return "default"

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool:
        return True

    def allow_migrate(self, db: str, app_label: str, **hints: Any) -> bool:
        # The replica is a copy of the primary: it is never migrated itself.
        return db == "default"
