"""Heartbeats: a claimed job beats (the claim, progress and the runner's beat thread), a job that
beats is never taken for a lost one until its timeout, one whose beats stop is reaped, a beat
racing the reaper wins, and beat threads stop with the app or the task."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import update

from kalpla_core.db import utcnow
from kalpla_core.jobs import heartbeat, reaper
from kalpla_core.jobs.celery_app import TASK_NAME, make_worker
from kalpla_core.jobs.heartbeat import LOST_AFTER, Beat
from kalpla_core.jobs.models import Job
from kalpla_core.jobs.reaper import silent_message, timed_out_message
from kalpla_core.testing import Factories
from tests import jobs_support
from tests.test_jobs_reaper import add_job, row, tag

HOUR = timedelta(hours=1)
SILENT = timedelta(seconds=LOST_AFTER + 60)  # longer than a run may go without a beat


@pytest.fixture
def fast_beats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Beat threads built from now on beat every 50 ms."""
    monkeypatch.setattr(heartbeat, "BEAT_INTERVAL", 0.05)


@pytest.fixture
def kalpla(make_app: Callable[..., Any]) -> Any:
    return make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support}
                    ).extensions["kalpla"]


def set_times(kalpla: Any, job_id: str, **ago: timedelta) -> datetime:
    """Move ``started_at``/``heartbeat_at`` of a job back by the given ages; returns now."""
    now = utcnow()
    with kalpla.db.session() as s:
        s.execute(update(Job).where(Job.id == job_id)
                  .values(**{column: now - age for column, age in ago.items()}))
    return now


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> bool:
    pause = threading.Event()
    for _ in range(int(seconds / 0.02)):
        if condition():
            return True
        pause.wait(0.02)
    return condition()


def beaten_since(kalpla: Any, job_id: str, mark: datetime) -> Callable[[], bool]:
    def check() -> bool:
        beat_at = row(kalpla, job_id).heartbeat_at
        return beat_at is not None and beat_at >= mark

    return check


def start_held(kalpla: Any, name: str, pause_name: str, owner_id: str | None = None,
               **params: Any) -> tuple[str, Any]:
    """A job enqueued and run by the in-process runner, held after its first step."""
    held = jobs_support.pause(pause_name)
    with kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, name, {"upto": 2, "pause": pause_name, **params},
                                     owner_id=owner_id).id
    assert held.reached.wait(10)
    return job_id, held


# --- what beats ------------------------------------------------------------------------------

def test_claim_and_progress_set_the_heartbeat(kalpla):
    factories = Factories(kalpla.jobs.app)
    user = factories.user()
    job_id, held = start_held(kalpla, "jobtest.count", "hb-claim", owner_id=user.id)
    try:
        running = row(kalpla, job_id)
        assert running.status == "running"
        assert running.heartbeat_at is not None and running.heartbeat_at >= running.started_at
        shown = kalpla.jobs.app.test_client().get(f"/api/v1/jobs/{job_id}",
                                                  headers=factories.auth(user)).json
        assert shown["heartbeat_at"] is not None and shown["started_at"] is not None
        mark = set_times(kalpla, job_id, heartbeat_at=HOUR)
    finally:
        held.resume.set()
    assert kalpla.jobs.wait(10)
    # Its second step's progress() beat (the beat thread's first beat is 30 s away).
    done = row(kalpla, job_id)
    assert done.status == "succeeded" and done.heartbeat_at >= mark


def test_beat_refreshes_running_jobs_only(kalpla):
    running = add_job(kalpla, status="running", age=HOUR)
    finished = add_job(kalpla, status="failed", age=HOUR)
    queued = add_job(kalpla, status="queued", age=HOUR)
    assert heartbeat.beat(kalpla.jobs, [running, finished, queued]) == 1
    assert heartbeat.beat(kalpla.jobs, []) == 0
    assert row(kalpla, running).heartbeat_at is not None
    assert row(kalpla, finished).heartbeat_at is None and row(kalpla, queued).heartbeat_at is None
    with pytest.raises(ValueError, match="beat interval"):
        Beat(kalpla.jobs, list, 0)


# --- the reaper judges by the heartbeat ------------------------------------------------------

def test_a_job_that_beats_is_not_reaped_however_long_it_runs_until_its_timeout(
        kalpla, fast_beats):
    # Retry-safe, so a reap would have queued it again and run it twice at once.
    t = tag()
    job_id, held = start_held(kalpla, "jobtest.recount", "hb-long", tag=t)
    try:
        for running_for in (timedelta(minutes=10), timedelta(minutes=30), HOUR - SILENT):
            # Long running, and last seen beating long ago, until the beat thread beats.
            mark = set_times(kalpla, job_id, started_at=running_for, heartbeat_at=HOUR)
            assert wait_for(beaten_since(kalpla, job_id, mark))
            report = kalpla.jobs.reap()
            assert (report.failed, report.requeued) == ([], [])
            assert row(kalpla, job_id).status == "running"
        # Past its timeout it is failed, beating or not, and not queued again: it still runs.
        set_times(kalpla, job_id, started_at=HOUR + timedelta(minutes=1))
        assert row(kalpla, job_id).heartbeat_at > utcnow() - SILENT
        report = kalpla.jobs.reap()
        assert (report.failed, report.requeued) == ([job_id], [])
        failed = row(kalpla, job_id)
        assert (failed.status, failed.error) == ("failed", timed_out_message(3600))
    finally:
        held.resume.set()
    assert kalpla.jobs.wait(10)
    late = row(kalpla, job_id)  # its late result is dropped
    assert (late.status, late.result) == ("failed", None)
    assert jobs_support.RUNS.count(t) == 1


def test_a_job_whose_beats_stopped_is_reaped_within_its_timeout(kalpla, submitted_ids):
    five_minutes = timedelta(minutes=5)
    silent = add_job(kalpla, status="running", age=five_minutes, upto=1)
    silent_retry = add_job(kalpla, "jobtest.recount", status="running", age=five_minutes,
                           upto=1)
    beating = add_job(kalpla, status="running", age=five_minutes, upto=1)
    set_times(kalpla, silent, heartbeat_at=SILENT)
    set_times(kalpla, silent_retry, heartbeat_at=SILENT)
    set_times(kalpla, beating, heartbeat_at=timedelta(seconds=LOST_AFTER - 60))

    report = kalpla.jobs.reap()
    assert (report.failed, report.requeued) == ([silent], [silent_retry])
    assert submitted_ids == [silent_retry]
    failed = row(kalpla, silent)
    assert (failed.status, failed.error) == ("failed", silent_message(LOST_AFTER))
    assert failed.error == f"worker lost: no heartbeat for {LOST_AFTER} s"
    queued = row(kalpla, silent_retry)
    assert (queued.status, queued.started_at, queued.heartbeat_at) == ("queued", None, None)
    assert queued.error == f"{silent_message(LOST_AFTER)}; queued again"
    assert row(kalpla, beating).status == "running"


def test_a_run_whose_beat_thread_stopped_is_reaped(kalpla, fast_beats):
    job_id, held = start_held(kalpla, "jobtest.count", "hb-stopped")
    try:
        beat = kalpla.jobs.runner.beat
        assert wait_for(lambda: beat.beats >= 2)
        beat.stop()  # as if its process had hung or died
        assert not beat.alive
        set_times(kalpla, job_id, heartbeat_at=SILENT)
        assert kalpla.jobs.reap().failed == [job_id]
        assert row(kalpla, job_id).error == silent_message(LOST_AFTER)
    finally:
        held.resume.set()
    assert kalpla.jobs.wait(10)
    assert row(kalpla, job_id).status == "failed"


@pytest.fixture
def submitted_ids(kalpla: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids handed to the runner by the reaper, which runs nothing."""
    ids: list[str] = []
    monkeypatch.setattr(kalpla.jobs.runner, "submit", ids.append)
    return ids


# --- a beat racing the reaper ----------------------------------------------------------------

def test_a_beat_between_the_sweeps_read_and_its_update_wins(kalpla, monkeypatch):
    # One job per sweep: on SQLite the sweep's first UPDATE takes the database's write lock,
    # which a beat from this same thread would then wait for.
    silent = add_job(kalpla, "jobtest.recount", status="running", age=timedelta(minutes=5))
    set_times(kalpla, silent, heartbeat_at=SILENT)
    settle = reaper._settle_lost_run
    read: list[str] = []

    def beat_first(s: Any, jobs: Any, now: Any, job_id: str, *args: Any) -> None:
        read.append(job_id)  # the sweep read it as silent; now its worker beats
        assert heartbeat.beat(jobs, [job_id]) == 1
        settle(s, jobs, now, job_id, *args)

    monkeypatch.setattr(reaper, "_settle_lost_run", beat_first)
    report = kalpla.jobs.reap()
    assert read == [silent]
    assert (report.failed, report.requeued, report.dispatched) == ([], [], [])
    assert row(kalpla, silent).status == "running"

    # A beat does not save a run past its timeout: that bounds its whole length.
    timed_out = add_job(kalpla, status="running", age=2 * HOUR)
    set_times(kalpla, timed_out, heartbeat_at=SILENT)
    assert kalpla.jobs.reap().failed == [timed_out]
    assert read == [silent, timed_out]
    assert row(kalpla, timed_out).error == timed_out_message(3600)
    assert row(kalpla, silent).status == "running"


def test_a_beat_holding_the_row_wins_over_a_concurrent_reap(kalpla, monkeypatch):
    # The beat's transaction is open when the sweep reads and then updates: the sweep's UPDATE
    # waits for it (a row lock on PostgreSQL, the write lock on SQLite), then finds the job
    # beating and leaves it.
    silent = add_job(kalpla, status="running", age=timedelta(minutes=5))
    set_times(kalpla, silent, heartbeat_at=SILENT)
    settle = reaper._settle_lost_run
    sweep_read = threading.Event()

    def signal(*args: Any) -> None:
        sweep_read.set()
        settle(*args)

    monkeypatch.setattr(reaper, "_settle_lost_run", signal)
    reports: list[Any] = []

    def sweep() -> None:
        with kalpla.jobs.app.app_context():
            reports.append(kalpla.jobs.reap())

    sweeper = threading.Thread(target=sweep)
    with kalpla.db.session() as s:
        s.execute(update(Job).where(Job.id == silent).values(heartbeat_at=utcnow()))
        sweeper.start()
        assert sweep_read.wait(10)
        threading.Event().wait(0.3)  # lets the sweep reach its UPDATE and wait there
    sweeper.join(30)
    assert len(reports) == 1 and reports[0].failed == []
    assert row(kalpla, silent).status == "running"


# --- beat threads stop -----------------------------------------------------------------------

def test_the_runners_beat_starts_with_its_first_job_and_stops_with_the_app(kalpla, fast_beats):
    runner = kalpla.jobs.runner
    assert not runner.beat.alive  # no job yet, no thread
    with kalpla.db.session() as s:
        kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 1})
    assert kalpla.jobs.wait(10)
    assert runner.beat.alive and kalpla.jobs.running_ids() == set()
    assert kalpla.jobs.shutdown(10)
    assert not runner.beat.alive
    assert not [th for th in threading.enumerate() if th.name == "kalpla-job-beat"]


def test_the_celery_task_beats_its_job_and_stops_beating_when_it_ends(make_app, fast_beats):
    app = make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support},
                   celery_broker_url="redis://127.0.0.1:1/6")
    kalpla = app.extensions["kalpla"]
    task = make_worker(app).tasks[TASK_NAME]
    held = jobs_support.pause("hb-celery")
    with kalpla.db.session() as s:
        job = Job(name="jobtest.count", params={"upto": 2, "pause": "hb-celery"},
                  status="queued")
        s.add(job)
        s.flush()
        job_id = job.id
    before = {th for th in threading.enumerate() if th.name == "kalpla-job-beat"}
    worker = threading.Thread(target=task.apply, args=([job_id],))
    worker.start()
    try:
        assert held.reached.wait(10)
        mark = set_times(kalpla, job_id, heartbeat_at=HOUR)
        assert wait_for(beaten_since(kalpla, job_id, mark))  # progress() waits: the beat did it
    finally:
        held.resume.set()
        worker.join(30)
    assert row(kalpla, job_id).status == "succeeded"
    assert {th for th in threading.enumerate()
            if th.name == "kalpla-job-beat" and th.is_alive()} <= before


# --- migration -------------------------------------------------------------------------------

def test_migration_adds_and_removes_the_heartbeat_and_older_runs_keep_their_timeout(
        make_app, empty_database_url):
    from sqlalchemy import inspect

    from kalpla_core import migrate
    from kalpla_core.jobs.reaper import lost_message

    app = make_app(database_url=empty_database_url, plugins=[])
    kalpla = app.extensions["kalpla"]
    migrate.upgrade(kalpla)
    migrate.downgrade(kalpla, "c0008")
    columns = {c["name"] for c in inspect(kalpla.db.engine).get_columns("jobs")}
    assert "heartbeat_at" not in columns and "started_at" in columns
    # A run claimed by a worker from before heartbeats, still running across the upgrade.
    started = utcnow() - 2 * HOUR
    with kalpla.db.engine.begin() as conn:
        conn.execute(Job.__table__.insert().values(
            id="oldrun", name="core.old", params={}, status="running", progress=0,
            progress_message="", created_at=started, started_at=started))
    kalpla.db.engine.dispose()
    migrate.upgrade(kalpla)
    assert migrate.differences(kalpla) == []
    assert row(kalpla, "oldrun").heartbeat_at is None
    assert kalpla.jobs.reap().failed == ["oldrun"]  # by its timeout, as before
    assert row(kalpla, "oldrun").error == lost_message(3600)
