"""The unit of work (one session per request or job, committed or rolled back as a whole),
events after commit, and UTC datetimes, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import logging
import types
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import request
from sqlalchemy import select, text
from sqlalchemy.exc import StatementError
from sqlalchemy.orm import Session

from kalpla_core import testing
from kalpla_core.db import Database, queue_after_commit
from kalpla_core.hookspecs import PluginMeta, hookimpl
from kalpla_core.institutions.models import Institution
from kalpla_core.institutions.service import create_institution
from kalpla_core.jobs.models import Job
from kalpla_core.testing import Factories
from kalpla_core.toolkit import APIError, Blueprint, current_institution, db_session, kalpla
from kalpla_core.version import __version__

PROBLEM = "application/problem+json"


def _slug_exists(db: Database, slug: str) -> bool:
    with db.session() as s:
        return s.scalar(select(Institution.id).where(Institution.slug == slug)) is not None


# --- a test-only plugin whose routes write, then succeed or fail -----------------------------

def _uow_plugin(events: list[tuple[str, bool]]) -> types.ModuleType:
    """Plugin ``uow``: each route writes, queues an after-commit callback that records whether
    the write is visible from another connection, then ends as the test asks."""
    blp = Blueprint("uow", __name__)

    def record(slug: str) -> None:
        db = kalpla().db
        queue_after_commit(db_session(), lambda: events.append((slug, _slug_exists(db, slug))))

    @blp.route("/institutions", methods=["POST"])
    def create() -> Any:
        body = request.get_json()
        create_institution(db_session(), body["slug"], "Written by the request")
        record(body["slug"])
        if body["outcome"] == "refused":
            raise APIError(422, "Refused after writing.", "validation")
        if body["outcome"] == "crash":
            raise RuntimeError("failure after writing")
        return {"slug": body["slug"]}, 201

    @blp.route("/duplicate", methods=["POST"])
    def duplicate() -> Any:
        # Not flushed: the unique slug is violated only when the request commits.
        db_session().add(Institution(slug=request.get_json()["slug"], name="Twin"))
        return {}, 201

    @blp.route("/stale", methods=["POST"])
    def stale() -> Any:
        inst = current_institution()
        with kalpla().db.session() as other:  # a concurrent writer wins the race
            other.get(Institution, inst.id).name = "Renamed elsewhere"  # type: ignore[union-attr]
        inst.name = "Renamed here"
        return {}, 200

    @blp.route("/noisy", methods=["POST"])
    def noisy() -> Any:
        create_institution(db_session(), "noisy", "Noisy")

        def fail() -> None:
            raise RuntimeError("a subscriber failed")

        queue_after_commit(db_session(), fail)
        record("noisy")
        return {}, 201

    module = types.ModuleType("kalpla_uow")
    module.KALPLA_PLUGIN = PluginMeta(  # type: ignore[attr-defined]
        name="uow", version="1.0.0", core_requires=f"=={__version__}")

    @hookimpl
    def kalpla_blueprints() -> list[Any]:
        return [blp]

    module.kalpla_blueprints = kalpla_blueprints  # type: ignore[attr-defined]
    return module


@pytest.fixture
def uow(make_app: Callable[..., Any]) -> types.SimpleNamespace:
    events: list[tuple[str, bool]] = []
    app = make_app(plugins=["uow"], plugin_objects={"uow": _uow_plugin(events)})
    factories = Factories(app)
    inst = factories.institution("uow-school", plugins=["uow"])
    return types.SimpleNamespace(
        app=app, client=app.test_client(), db=app.extensions["kalpla"].db, events=events,
        institution=inst, headers={"Kalpla-Institution": inst.slug})


def test_successful_request_commits_then_runs_its_events(uow):
    r = uow.client.post("/api/v1/uow/institutions", json={"slug": "kept", "outcome": "ok"},
                        headers=uow.headers)
    assert r.status_code == 201
    assert _slug_exists(uow.db, "kept")
    # The callback ran after the commit: another connection already saw the row.
    assert uow.events == [("kept", True)]


@pytest.mark.parametrize(("outcome", "status"), [("refused", 422), ("crash", 500)])
def test_failed_request_writes_nothing_and_runs_no_event(uow, outcome, status):
    r = uow.client.post("/api/v1/uow/institutions", json={"slug": "gone", "outcome": outcome},
                        headers=uow.headers)
    assert r.status_code == status
    assert r.content_type == PROBLEM
    assert "failure after writing" not in r.get_data(as_text=True)
    assert not _slug_exists(uow.db, "gone")
    assert uow.events == []


def test_unique_violation_at_commit_answers_409(uow):
    r = uow.client.post("/api/v1/uow/duplicate", json={"slug": uow.institution.slug},
                        headers=uow.headers)
    assert r.status_code == 409
    assert r.content_type == PROBLEM
    assert r.json["type"] == "urn:kalpla:problem:conflict"
    with uow.db.session() as s:
        assert s.scalars(select(Institution.name).where(
            Institution.slug == uow.institution.slug)).all() == [uow.institution.name]


def test_stale_optimistic_lock_answers_412(uow):
    r = uow.client.post("/api/v1/uow/stale", headers=uow.headers)
    assert r.status_code == 412
    assert r.content_type == PROBLEM
    assert r.json["type"] == "urn:kalpla:problem:precondition-failed"
    with uow.db.session() as s:
        inst = s.get(Institution, uow.institution.id)
        assert inst is not None
        assert (inst.name, inst.version) == ("Renamed elsewhere", uow.institution.version + 1)


def test_failing_after_commit_callback_neither_breaks_the_response_nor_others(uow, caplog):
    with caplog.at_level(logging.ERROR, logger="kalpla_core.db"):
        r = uow.client.post("/api/v1/uow/noisy", headers=uow.headers)
    assert r.status_code == 201
    assert uow.events == [("noisy", True)]
    assert "after-commit callback failed" in caplog.text


# --- queue_after_commit on a session ----------------------------------------------------------

@pytest.fixture
def database(app: Any) -> Database:
    return app.extensions["kalpla"].db


def _queue(session: Session, ran: list[str], name: str) -> None:
    queue_after_commit(session, lambda: ran.append(name))


def test_unit_of_work_commits_on_success_and_rolls_back_on_error(database):
    ran: list[str] = []
    with database.session() as s:
        create_institution(s, "committed", "Committed")
        _queue(s, ran, "committed")
    with pytest.raises(RuntimeError), database.session() as s:
        create_institution(s, "rolled-back", "Rolled back")
        _queue(s, ran, "rolled-back")
        raise RuntimeError("abort the unit of work")
    assert _slug_exists(database, "committed")
    assert not _slug_exists(database, "rolled-back")
    assert ran == ["committed"]


def test_rollback_discards_events_even_if_the_session_commits_later(database):
    ran: list[str] = []
    with database.session() as s:
        _queue(s, ran, "before-rollback")
        s.rollback()
        _queue(s, ran, "after-rollback")
    assert ran == ["after-rollback"]


def test_events_queued_before_any_statement_follow_the_same_rules(database):
    ran: list[str] = []
    s = database.sessionmaker()
    _queue(s, ran, "first")  # no transaction begun yet
    s.rollback()
    s.commit()
    s.close()
    assert ran == []


def test_closing_without_commit_discards_events(database):
    ran: list[str] = []
    s = database.sessionmaker()
    s.execute(text("SELECT 1"))
    _queue(s, ran, "closed")
    s.close()
    s.execute(text("SELECT 1"))
    s.commit()
    s.close()
    assert ran == []


def test_savepoints(database):
    """A released savepoint waits for the outer commit; a rolled-back one drops its events."""
    ran: list[str] = []
    with database.session() as s:
        with s.begin_nested():
            _queue(s, ran, "released")
        assert ran == []
        outer = s.begin_nested()
        _queue(s, ran, "outer")
        inner = s.begin_nested()
        _queue(s, ran, "inner")
        inner.rollback()
        outer.commit()
        assert ran == []
    assert ran == ["released", "outer"]

    ran.clear()
    with database.session() as s:
        with s.begin_nested():
            _queue(s, ran, "released-then-rolled-back")
        s.rollback()
    assert ran == []


# --- the harness cleans up after a leaked session --------------------------------------------

def test_cleaning_ends_a_transaction_the_test_leaked(database, monkeypatch):
    if database.dialect != "postgresql":
        pytest.skip("ending other connections is PostgreSQL's; SQLite waits busy_timeout")
    monkeypatch.setattr(testing, "CLEAN_LOCK_TIMEOUT", "200ms")
    with database.session() as s:
        create_institution(s, "locked", "Locked")
    leaked = database.engine.connect()
    leaked.begin()
    leaked.execute(text("UPDATE institutions SET name = 'mine' WHERE slug = 'locked'"))
    try:
        with pytest.warns(UserWarning, match="left inside a transaction"):
            testing.clean_database(database.engine)
        assert not _slug_exists(database, "locked")
    finally:
        leaked.invalidate()


# --- UTC datetimes ----------------------------------------------------------------------------

IST = timezone(timedelta(hours=5, minutes=30))


def test_datetimes_round_trip_as_aware_utc(database):
    started = datetime(2026, 3, 1, 9, 15, 30, 123456, tzinfo=IST)  # 03:45:30.123456 UTC
    with database.session() as s:
        job = Job(name="t", started_at=started, finished_at=None)
        s.add(job)
    with database.session() as s:
        if database.dialect == "postgresql":
            # The server answers in the session's time zone; values must still come back UTC.
            s.execute(text("SET LOCAL TIME ZONE 'America/New_York'"))
        got = s.get(Job, job.id)
        assert got is not None
        assert got.started_at == started
        assert got.started_at.tzinfo is UTC
        assert (got.started_at.hour, got.started_at.microsecond) == (3, 123456)
        assert got.created_at.tzinfo is UTC
        assert got.finished_at is None


def test_utc_is_what_is_stored_and_compared(database):
    base = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with database.session() as s:
        s.add_all([Job(name=f"j{h}", started_at=base + timedelta(hours=h)) for h in range(3)])
    with database.session() as s:
        # 17:30 in India is 12:00 UTC: a filter in any zone compares instants, not wall times.
        after = s.scalars(select(Job.name).where(Job.started_at > base.astimezone(IST))
                          .order_by(Job.name)).all()
        assert after == ["j1", "j2"]
        column = ("started_at" if database.dialect == "sqlite"  # the UTC wall time, as text
                  else "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')")
        stored = s.scalar(text(f"SELECT {column} FROM jobs WHERE name = 'j0'"))  # noqa: S608
    assert str(stored).startswith("2026-03-01 12:00:00")


def test_naive_datetimes_are_refused(database):
    with pytest.raises(StatementError, match="naive datetime"), database.session() as s:
        s.add(Job(name="naive", started_at=datetime(2026, 3, 1, 12, 0)))
        s.flush()
