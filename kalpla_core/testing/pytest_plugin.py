"""pytest fixtures for Kalpla and its plugins.

- ``make_app(plugins=None, plugin_objects=None, **config)``: an app on the test database;
- ``app`` / ``client``: one app per test; ``@pytest.mark.plugins("a", "b")`` chooses plugins
  (default: every installed plugin);
- ``db``: a session on the test database (commit to make rows visible to requests);
- ``factories``: :class:`kalpla_core.testing.Factories` for the ``app``;
- ``query_counter``: ``with query_counter() as q: …; assert q.count <= 3``.

The database is SQLite in a temporary folder, or PostgreSQL when ``KALPLA_TEST_DATABASE_URL``
is set. It is migrated once per session (core and every installed plugin) and emptied after
each test.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from kalpla_core.testing import Factories, clean_database, count_queries

TEST_SECRET = "test-secret-key-that-is-long-enough-for-kalpla"


def _reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def kalpla_test_settings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Settings every test app shares: instance folder, database URL, secret key."""
    instance = tmp_path_factory.mktemp("kalpla-instance")
    url = os.environ.get("KALPLA_TEST_DATABASE_URL") or f"sqlite:///{instance / 'test.db'}"
    if url.startswith("postgresql"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
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

    apps: list[Any] = []

    def _make(plugins: list[str] | tuple[str, ...] | None = None,
              plugin_objects: dict[str, Any] | None = None, **config: Any) -> Any:
        cfg: dict[str, Any] = {**kalpla_test_settings, **config, "plugins": plugins}
        if plugin_objects:
            cfg["plugin_objects"] = plugin_objects
        app = create_app(cfg)
        app.config["TESTING"] = True
        kalpla = app.extensions["kalpla"]
        if not apps:
            with kalpla.db.session() as s:
                ensure_default_institution(s)
        apps.append(app)
        return app

    yield _make
    for app in apps:
        kalpla = app.extensions["kalpla"]
        runner = kalpla.jobs._runner
        if runner is not None:
            runner.wait(timeout=30)
    if apps:
        clean_database(apps[0].extensions["kalpla"].db.engine)
    for app in apps:
        app.extensions["kalpla"].db.dispose()


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
