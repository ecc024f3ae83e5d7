"""pytest fixtures for Kalpla and its plugins.

- ``make_app(plugins=None, plugin_objects=None, **config)``: an app on the test database;
- ``app`` / ``client``: one app per test; ``@pytest.mark.plugins("a", "b")`` chooses plugins
  (default: every installed plugin);
- ``db``: a session on the test database (commit to make rows visible to requests);
- ``factories``: :class:`kalpla_core.testing.Factories` for the ``app``;
- ``query_counter``: ``with query_counter() as q: …; assert q.count <= 3``;
- ``empty_database_url``: an empty database of its own, for tests of migrations
  (``make_app(database_url=empty_database_url)`` then ``kalpla_core.migrate.upgrade``).

The database is SQLite in a temporary folder, or PostgreSQL when ``KALPLA_TEST_DATABASE_URL``
is set. It is migrated once per session (core and every installed plugin) and emptied after
each test; on PostgreSQL the ``public`` schema is dropped and recreated at session start.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError

from kalpla_core.testing import LOCK_NOT_AVAILABLE, Factories, clean_database, count_queries

TEST_SECRET = "test-secret-key-that-is-long-enough-for-kalpla"
EMPTY_SCHEMA_PREFIX = "kalpla_empty_"


def _test_url(url: str) -> str:
    """The test database URL; on PostgreSQL its connections are named after this run, so the
    harness can tell them from others."""
    if not url.startswith("postgresql"):
        return url
    parsed = make_url(url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    parsed = parsed.update_query_dict({"application_name": f"kalpla-test-{os.getpid()}"})
    return parsed.render_as_string(hide_password=False)


def _reset_postgres(url: str) -> None:
    """Start from an empty ``public`` schema; drop the empty databases of aborted runs."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            # Without a timeout, a connection of another process idle inside a transaction
            # would make DROP SCHEMA wait forever.
            conn.execute(text("SET LOCAL lock_timeout = '20s'"))
            leftovers = conn.scalars(text(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE :prefix"),
                {"prefix": f"{EMPTY_SCHEMA_PREFIX}%"}).all()
            for schema in [*leftovers, "public"]:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
            conn.execute(text("CREATE SCHEMA public"))
    except OperationalError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        pytest.exit(f"the test database {engine.url.database!r} is locked by other "
                    f"connections ({_holders(engine)}); stop them and run again",
                    returncode=pytest.ExitCode.USAGE_ERROR)
    finally:
        engine.dispose()


def _holders(engine: Engine) -> str:
    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT pid, application_name, state FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()")).all()
    return ", ".join(f"pid {pid} {name or '?'} {state}" for pid, name, state in rows) or "none"


@pytest.fixture(scope="session")
def kalpla_test_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Settings every test app shares: instance folder, database URL, secret key."""
    instance = tmp_path_factory.mktemp("kalpla-instance")
    url = _test_url(os.environ.get("KALPLA_TEST_DATABASE_URL")
                    or f"sqlite:///{instance / 'test.db'}")
    if url.startswith("postgresql"):
        _reset_postgres(url)
    settings = {"instance_path": str(instance), "database_url": url,
                "secret_key": TEST_SECRET, "log_level": "WARNING",
                "celery_broker_url": None, "redis_url": os.environ.get("KALPLA_TEST_REDIS_URL")}
    from kalpla_core import create_app, migrate

    app = create_app({**settings, "plugins": None})
    migrate.upgrade(app.extensions["kalpla"])
    app.extensions["kalpla"].db.dispose()
    return settings


@pytest.fixture
def make_app(kalpla_test_settings: dict[str, Any]) -> Iterator[Callable[..., Any]]:
    from kalpla_core import create_app
    from kalpla_core.institutions.service import ensure_default_institution

    shared_url = kalpla_test_settings["database_url"]
    apps: list[Any] = []

    def _make(plugins: list[str] | tuple[str, ...] | None = None,
              plugin_objects: dict[str, Any] | None = None, **config: Any) -> Any:
        cfg: dict[str, Any] = {**kalpla_test_settings, **config, "plugins": plugins}
        if plugin_objects:
            cfg["plugin_objects"] = plugin_objects
        app = create_app(cfg)
        app.config["TESTING"] = True
        kalpla = app.extensions["kalpla"]
        on_shared = kalpla.db.url == shared_url
        if on_shared and not any(a.extensions["kalpla"].db.url == shared_url for a in apps):
            with kalpla.db.session() as s:
                ensure_default_institution(s)
        apps.append(app)
        return app

    yield _make
    for app in apps:
        # Jobs finish before the tables are emptied; the runner's threads stop with them.
        app.extensions["kalpla"].jobs.shutdown(timeout=30)
    # Pooled connections are closed before cleaning, so only a leaked session can hold a lock.
    for app in apps:
        app.extensions["kalpla"].db.dispose()
    shared = [a for a in apps if a.extensions["kalpla"].db.url == shared_url]
    if shared:
        engine = shared[0].extensions["kalpla"].db.engine
        clean_database(engine)
        engine.dispose()


@pytest.fixture
def empty_database_url(kalpla_test_settings: dict[str, Any],
                       tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database for this test alone, to run migrations on: a new SQLite
    file, or on PostgreSQL a new schema of the test database, dropped afterwards."""
    url = kalpla_test_settings["database_url"]
    if not url.startswith("postgresql"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    schema = f"{EMPTY_SCHEMA_PREFIX}{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield make_url(url).update_query_dict({
            "options": f"-csearch_path={schema}", "application_name": schema,
        }).render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            # Connections still open on the schema (apps not yet disposed) are ended first.
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE application_name = :name"), {"name": schema})
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def app(request: pytest.FixtureRequest, make_app: Callable[..., Any]) -> Any:
    marker = request.node.get_closest_marker("plugins")
    plugins = list(marker.args) if marker else None
    return make_app(plugins=plugins)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture
def db(app: Any) -> Iterator[Any]:
    session = app.extensions["kalpla"].db.sessionmaker()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


@pytest.fixture
def factories(app: Any) -> Factories:
    return Factories(app)


@pytest.fixture
def query_counter(app: Any) -> Callable[[], Any]:
    engine = app.extensions["kalpla"].db.engine
    return lambda: count_queries(engine)


def pytest_report_header(config: pytest.Config) -> str:
    url = os.environ.get("KALPLA_TEST_DATABASE_URL")
    backend = "PostgreSQL" if url else "SQLite"
    redis = os.environ.get("KALPLA_TEST_REDIS_URL") or "in-process"
    return f"kalpla: database {backend}, redis {redis}, plugins from {Path.cwd().name}"
