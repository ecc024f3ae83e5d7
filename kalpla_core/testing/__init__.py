"""Test helpers for the core and for plugins: factories, a query counter, database cleaning.

The fixtures that use them live in :mod:`kalpla_core.testing.pytest_plugin`, which pytest
loads by itself (entry point ``pytest11``) wherever ``kalpla`` is installed.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from kalpla_core.identity.models import Membership, User
from kalpla_core.identity.passwords import hash_password
from kalpla_core.institutions.models import Institution
from kalpla_core.institutions.service import create_institution, ensure_default_institution

__all__ = [
    "Factories", "QueryCounter", "clean_database", "count_queries", "end_leaked_transactions",
]

LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL SQLSTATE when lock_timeout expires
CLEAN_LOCK_TIMEOUT = "5s"  # how long cleaning waits for a lock before ending leaked sessions


@dataclass
class QueryCounter:
    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)


@contextmanager
def count_queries(engine: Engine) -> Iterator[QueryCounter]:
    """Count SQL statements sent through ``engine`` inside the block."""
    counter = QueryCounter()

    def _before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        counter.statements.append(statement)

    event.listen(engine, "before_cursor_execute", _before)
    try:
        yield counter
    finally:
        event.remove(engine, "before_cursor_execute", _before)


def clean_database(engine: Engine) -> None:
    """Delete every row of every table but Alembic's, children before parents.

    DELETE rather than TRUNCATE: on the few rows a test leaves, it is many times faster on
    PostgreSQL. A connection of this test run left inside a transaction (a session never
    closed) could block it forever, so on PostgreSQL such connections are ended after a short
    wait, with a warning.
    """
    from kalpla_core.db import Base

    known = [t.name for t in reversed(Base.metadata.sorted_tables)]
    present = set(inspect(engine).get_table_names()) - {"alembic_version"}
    order = [t for t in present if t not in known] + [t for t in known if t in present]
    postgres = engine.dialect.name == "postgresql"
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                if postgres:
                    conn.execute(text(f"SET LOCAL lock_timeout = '{CLEAN_LOCK_TIMEOUT}'"))
                for table in order:
                    conn.execute(text(f'DELETE FROM "{table}"'))  # noqa: S608 (schema names)
            return
        except OperationalError as exc:
            if (getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE or attempt == 2
                    or not end_leaked_transactions(engine)):
                raise


def end_leaked_transactions(engine: Engine) -> int:
    """End this test run's PostgreSQL connections that sit idle inside a transaction (the
    engine URL's ``application_name`` names the run); returns how many were ended."""
    name = engine.url.query.get("application_name")
    if not name:
        return 0
    with engine.connect() as conn:
        pids = list(conn.scalars(text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = :name AND pid <> pg_backend_pid() "
            "AND state LIKE 'idle in transaction%'"), {"name": name}))
    if pids:
        warnings.warn(f"{len(pids)} database connection(s) were left inside a transaction "
                      "after the test (a session not closed?); they were ended", stacklevel=2)
    return len(pids)


@functools.cache
def _hash(password: str) -> str:
    # argon2id is slow by design; tests reuse one hash per password.
    return hash_password(password)


class Factories:
    """Create rows for tests, each committed so that requests see them."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.kalpla = app.extensions["kalpla"]
        self._n = 0

    def _seq(self) -> int:
        self._n += 1
        return self._n

    def default_institution(self) -> Institution:
        with self.kalpla.db.session() as s:
            return ensure_default_institution(s)

    def institution(self, slug: str | None = None, name: str | None = None,
                    plugins: Mapping[str, Mapping[str, Any]] | Iterable[str] = ()) -> Institution:
        """An institution, with ``plugins`` enabled (names, or names to settings)."""
        from kalpla_core.institutions.service import enable_plugin

        slug = slug or f"inst-{self._seq()}"
        with self.kalpla.db.session() as s:
            inst = create_institution(s, slug, name or slug.title())
            items = plugins.items() if isinstance(plugins, Mapping) else ((p, {}) for p in plugins)
            for plugin, settings in items:
                enable_plugin(s, self.kalpla, inst, plugin, dict(settings))
            return inst

    def enable(self, institution: Institution, plugin: str, **settings: Any) -> None:
        from kalpla_core.institutions.service import enable_plugin

        with self.kalpla.db.session() as s:
            enable_plugin(s, self.kalpla, s.merge(institution), plugin, settings)

    def user(self, email: str | None = None, password: str = "correct horse battery",
             name: str = "", platform_admin: bool = False, active: bool = True,
             roles: Mapping[Institution | str, Iterable[str]] | None = None,
             verified: bool = True) -> User:
        """A user; ``roles`` maps institutions (or their ids) to role names."""
        from kalpla_core.db import utcnow

        n = self._seq()
        with self.kalpla.db.session() as s:
            user = User(email=email or f"user{n}@example.test", name=name or f"User {n}",
                        password_hash=_hash(password), is_platform_admin=platform_admin,
                        is_active=active, email_verified_at=utcnow() if verified else None)
            s.add(user)
            s.flush()
            for inst, role_names in (roles or {}).items():
                inst_id = inst if isinstance(inst, str) else inst.id
                for role in role_names:
                    s.add(Membership(user_id=user.id, institution_id=inst_id, role=role))
            return user

    def token(self, user: User) -> str:
        with self.kalpla.db.session() as s:
            fresh = s.get(User, user.id)
            assert fresh is not None
            return self.kalpla.keys.issue(s, fresh.id, {"gen": fresh.token_generation})

    def auth(self, user: User, institution: Institution | None = None) -> dict[str, str]:
        """Request headers authenticating as ``user`` (and naming ``institution``)."""
        headers = {"Authorization": f"Bearer {self.token(user)}"}
        if institution is not None:
            headers["Kalpla-Institution"] = institution.slug
        return headers
