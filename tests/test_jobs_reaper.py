"""Jobs that outlive their worker: running jobs past their timeout are failed (or queued again
once when retry-safe), queued jobs left behind are handed to a worker again and still run once,
fresh jobs are left alone; the sweeper thread, ``kalpla jobs reap`` and the setting."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from kalpla_core.cli import make_cli
from kalpla_core.config import ConfigError, load_settings
from kalpla_core.db import utcnow
from kalpla_core.jobs import JobSpec
from kalpla_core.jobs.models import Job
from kalpla_core.jobs.reaper import QUEUED_GRACE, lost_message
from kalpla_core.testing import Factories
from tests import jobs_support

HOUR = timedelta(hours=1)


@pytest.fixture
def japp(make_app: Callable[..., Any]) -> Any:
    return make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support})


@pytest.fixture
def kalpla(japp: Any) -> Any:
    return japp.extensions["kalpla"]


@pytest.fixture
def submitted(kalpla: Any, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Ids handed to the runner, in order (the runner still runs them)."""
    runner = kalpla.jobs.runner
    ids: list[str] = []
    submit = runner.submit

    def spy(job_id: str) -> None:
        ids.append(job_id)
        submit(job_id)

    monkeypatch.setattr(runner, "submit", spy)
    return ids


def add_job(kalpla: Any, name: str = "jobtest.count", *, status: str,
            age: timedelta = timedelta(0), running_for: timedelta | None = None,
            **params: Any) -> str:
    """A job record as a worker (or a stopped process) left it: created ``age`` ago, and
    when running, started ``running_for`` ago."""
    now = utcnow()
    with kalpla.db.session() as s:
        job = Job(name=name, params=params, status=status, created_at=now - age,
                  progress=40 if status == "running" else 0,
                  progress_message="counted 2 of 5" if status == "running" else "")
        if status == "running":
            job.started_at = now - (running_for if running_for is not None else age)
        s.add(job)
        s.flush()
        return job.id


def row(kalpla: Any, job_id: str) -> Job:
    with kalpla.db.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def tag() -> str:
    return uuid.uuid4().hex


# --- running jobs whose worker is gone -------------------------------------------------------

def test_running_job_past_its_timeout_fails_and_says_why(japp, kalpla, submitted):
    user = Factories(japp).user()
    with kalpla.db.session() as s:
        job = Job(name="jobtest.count", params={"upto": 5}, status="running",
                  owner_id=user.id, created_at=utcnow() - 2 * HOUR,
                  started_at=utcnow() - 2 * HOUR)
        s.add(job)
        s.flush()
        lost = job.id
    fresh_running = add_job(kalpla, status="running", age=HOUR - timedelta(minutes=1))
    fresh_queued = add_job(kalpla, status="queued", age=timedelta(seconds=QUEUED_GRACE - 60),
                           upto=1)
    done = add_job(kalpla, status="succeeded", age=3 * HOUR)

    report = kalpla.jobs.reap()
    assert (report.failed, report.requeued, report.dispatched) == ([lost], [], [])
    assert submitted == []

    failed = row(kalpla, lost)
    assert failed.status == "failed"
    assert failed.error == "worker lost: no result after 3600 s" == lost_message(3600)
    assert failed.finished_at is not None and failed.result is None
    r = japp.test_client().get(f"/api/v1/jobs/{lost}", headers=Factories(japp).auth(user))
    assert (r.json["status"], r.json["error"]) == ("failed", "worker lost: no result after 3600 s")

    for untouched, status in ((fresh_running, "running"), (fresh_queued, "queued"),
                              (done, "succeeded")):
        job = row(kalpla, untouched)
        assert (job.status, job.error, job.finished_at) == (status, None, None)
    assert kalpla.jobs.reap().failed == []  # nothing left to do


def test_timeouts_come_from_the_job_spec_then_the_setting(make_app):
    app = make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support},
                   job_timeout=600)
    kalpla = app.extensions["kalpla"]
    assert kalpla.jobs.timeout_of("jobtest.quick") == 60  # JobSpec(count, timeout=60)
    assert kalpla.jobs.timeout_of("jobtest.count") == 600  # KALPLA_JOB_TIMEOUT
    assert kalpla.jobs.timeout_of("jobtest.removed") == 600  # unknown here: the setting
    two_minutes = timedelta(minutes=2)
    quick = add_job(kalpla, "jobtest.quick", status="running", age=two_minutes, upto=1)
    count = add_job(kalpla, "jobtest.count", status="running", age=two_minutes, upto=1)
    removed = add_job(kalpla, "jobtest.removed", status="running", age=timedelta(minutes=11))

    assert sorted(kalpla.jobs.reap().failed) == sorted([quick, removed])
    assert row(kalpla, quick).error == "worker lost: no result after 60 s"
    assert row(kalpla, removed).error == "worker lost: no result after 600 s"
    assert row(kalpla, count).status == "running"


def test_retry_safe_job_is_queued_again_once_and_runs_once(kalpla, submitted):
    t = tag()
    lost = add_job(kalpla, "jobtest.recount", status="running", age=2 * HOUR, upto=3, tag=t)

    report = kalpla.jobs.reap()
    assert (report.failed, report.requeued, report.dispatched) == ([], [lost], [lost])
    assert submitted == [lost]
    assert kalpla.jobs.wait(10)
    assert jobs_support.RUNS.count(t) == 1
    done = row(kalpla, lost)
    assert (done.status, done.result["total"], done.progress) == ("succeeded", 6, 100)
    assert done.error is None  # the lost run's notice goes once a run succeeds
    assert done.started_at is not None and done.started_at > utcnow() - timedelta(minutes=1)


def test_retry_safe_job_is_queued_again_only_once(kalpla, submitted, monkeypatch):
    # Hold the requeued run so that it can be seen queued, then lose it a second time.
    monkeypatch.setattr(kalpla.jobs.runner, "submit", submitted.append)
    lost = add_job(kalpla, "jobtest.recount", status="running", age=2 * HOUR, upto=1)
    assert kalpla.jobs.reap().requeued == [lost]
    queued = row(kalpla, lost)
    assert (queued.status, queued.started_at, queued.progress, queued.progress_message) == (
        "queued", None, 0, "")
    assert queued.error == "worker lost: no result after 3600 s; queued again"

    with kalpla.db.session() as s:  # claimed again, and its worker dies again
        again = s.get(Job, lost)
        again.status, again.started_at = "running", utcnow() - 2 * HOUR
    report = kalpla.jobs.reap()
    assert (report.failed, report.requeued) == ([lost], [])
    failed = row(kalpla, lost)
    assert (failed.status, failed.error) == ("failed", "worker lost: no result after 3600 s")


def test_two_reapers_never_both_act_on_a_job(japp, kalpla, submitted, monkeypatch):
    monkeypatch.setattr(kalpla.jobs.runner, "submit", submitted.append)
    failing = [add_job(kalpla, status="running", age=2 * HOUR) for _ in range(8)]
    retrying = [add_job(kalpla, "jobtest.recount", status="running", age=2 * HOUR, upto=1)
                for _ in range(8)]
    start = threading.Barrier(2)
    reports: list[Any] = []

    def sweep() -> None:
        start.wait(5)
        with japp.app_context():
            reports.append(kalpla.jobs.reap())

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert len(reports) == 2
    assert sorted(reports[0].failed + reports[1].failed) == sorted(failing)
    assert sorted(reports[0].requeued + reports[1].requeued) == sorted(retrying)
    # Requeued once, so queued (not failed) however the two interleaved.
    assert {row(kalpla, i).status for i in retrying} == {"queued"}
    # Handed over by the reaper that requeued each, and maybe by the other's queued step
    # too (the claim runs it once).
    assert set(submitted) == set(retrying)


# --- queued jobs left behind -----------------------------------------------------------------

def test_queued_job_left_behind_is_dispatched_and_runs_once(kalpla, submitted):
    t = tag()
    left = add_job(kalpla, status="queued", age=timedelta(seconds=QUEUED_GRACE + 60),
                   upto=2, tag=t)
    fresh = add_job(kalpla, status="queued", age=timedelta(seconds=QUEUED_GRACE - 60), upto=1)

    report = kalpla.jobs.reap()
    assert (report.failed, report.requeued, report.dispatched) == ([], [], [left])
    assert kalpla.jobs.wait(10)
    assert submitted == [left]
    assert jobs_support.RUNS.count(t) == 1
    assert row(kalpla, left).status == "succeeded"
    assert row(kalpla, fresh).status == "queued"

    # A shorter grace (kalpla jobs reap --queued-grace 0) takes it too.
    assert kalpla.jobs.reap(queued_grace=0).dispatched == [fresh]
    assert kalpla.jobs.wait(10)
    assert row(kalpla, fresh).status == "succeeded"


def test_two_sweeps_dispatching_one_job_run_it_once(japp, kalpla, monkeypatch):
    # Both sweeps have read the job as queued before either hands it over: the runner gets
    # it twice, and its two pool threads race to claim it.
    t = tag()
    left = add_job(kalpla, status="queued", age=HOUR, upto=3, tag=t)
    runner = kalpla.jobs.runner
    submit = runner.submit
    both_read = threading.Barrier(2)
    handed: list[str] = []

    def submit_when_both_have_read(job_id: str) -> None:
        both_read.wait(10)
        handed.append(job_id)
        submit(job_id)

    monkeypatch.setattr(runner, "submit", submit_when_both_have_read)
    reports: list[Any] = []

    def sweep() -> None:
        with japp.app_context():
            reports.append(kalpla.jobs.reap())

    threads = [threading.Thread(target=sweep) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert kalpla.jobs.wait(10)
    assert [r.dispatched for r in reports] == [[left], [left]]
    assert handed == [left, left]
    assert jobs_support.RUNS.count(t) == 1
    done = row(kalpla, left)
    assert (done.status, done.result["total"]) == ("succeeded", 6)


def test_job_dispatched_by_its_first_process_and_another_runs_once(make_app):
    # Two serving processes on one database: the job's own and one whose sweep finds it.
    first, other = (make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support})
                    .extensions["kalpla"] for _ in range(2))
    t = tag()
    left = add_job(first, status="queued", age=HOUR, upto=2, tag=t)
    first.jobs.runner.submit(left)
    assert other.jobs.reap().dispatched in ([left], [])  # [] when the first already ran it
    assert first.jobs.wait(10) and other.jobs.wait(10)
    assert jobs_support.RUNS.count(t) == 1
    assert row(first, left).status == "succeeded"


def test_a_refused_hand_over_leaves_the_job_queued(kalpla, monkeypatch, caplog):
    left = [add_job(kalpla, status="queued", age=HOUR, upto=1) for _ in range(2)]

    def refuse(job_id: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(kalpla.jobs.runner, "submit", refuse)
    assert kalpla.jobs.reap().dispatched == []
    assert {row(kalpla, i).status for i in left} == {"queued"}  # for the next sweep
    assert any(getattr(rec, "job_id", None) in left for rec in caplog.records)


def test_a_sweep_reads_a_bounded_batch_of_each_kind(kalpla, submitted, monkeypatch):
    # A backlog (workers down for hours) is settled a batch per sweep, oldest first, and
    # never read whole.
    from kalpla_core.jobs import reaper
    from kalpla_core.testing import count_queries

    monkeypatch.setattr(reaper, "QUEUED_BATCH", 2)
    monkeypatch.setattr(reaper, "RUNNING_BATCH", 2)
    left = [add_job(kalpla, status="queued", age=HOUR + timedelta(minutes=10 - i), upto=1)
            for i in range(3)]
    lost = [add_job(kalpla, status="running", age=2 * HOUR + timedelta(minutes=10 - i))
            for i in range(3)]
    with count_queries(kalpla.db.engine) as counter:
        report = kalpla.jobs.reap()
    # The sweep's reads by status (not the runner's reads of one job by id).
    reads = [st for st in counter.statements
             if st.lstrip().upper().startswith("SELECT") and "WHERE jobs.status" in st]
    assert reads and all("LIMIT" in st.upper() for st in reads)
    assert sorted(report.failed) == sorted(lost[:2])
    assert report.dispatched == left[:2]
    assert kalpla.jobs.wait(10)
    assert row(kalpla, lost[2]).status == "running"  # the next sweep's
    assert kalpla.jobs.reap().failed == [lost[2]]
    assert kalpla.jobs.wait(10)


def test_runs_within_a_longer_timeout_do_not_crowd_lost_ones_out_of_a_batch(make_app,
                                                                           monkeypatch):
    from kalpla_core.jobs import reaper

    app = make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support},
                   job_timeout=600)
    kalpla = app.extensions["kalpla"]
    monkeypatch.setattr(reaper, "RUNNING_BATCH", 2)
    # Two older runs past the one-minute timeout of jobtest.quick, within their own ten.
    busy = [add_job(kalpla, "jobtest.count", status="running", age=HOUR,
                    running_for=timedelta(minutes=2)) for _ in range(2)]
    lost = add_job(kalpla, "jobtest.quick", status="running", age=timedelta(minutes=2))
    assert kalpla.jobs.reap().failed == [lost]
    assert {row(kalpla, i).status for i in busy} == {"running"}


# --- where it runs ---------------------------------------------------------------------------

def test_sweeper_reaps_at_once_and_stops_with_the_app(kalpla):
    t = tag()
    left = add_job(kalpla, status="queued", age=HOUR, upto=1, tag=t)
    lost = add_job(kalpla, status="running", age=2 * HOUR)
    assert kalpla.jobs.start_sweeper(interval=3600)
    sweeper = kalpla.jobs._sweeper
    assert kalpla.jobs.start_sweeper() and kalpla.jobs._sweeper is sweeper  # one per app
    deadline = threading.Event()
    for _ in range(100):  # the first sweep runs at once
        if sweeper.sweeps:
            break
        deadline.wait(0.1)
    assert sweeper.sweeps >= 1
    assert kalpla.jobs.wait(10)
    assert row(kalpla, left).status == "succeeded"
    assert row(kalpla, lost).status == "failed"
    assert kalpla.jobs.shutdown(10)
    assert not sweeper.alive and kalpla.jobs._sweeper is None


def test_reap_with_celery_sends_left_behind_jobs_to_the_broker(make_app):
    # Kombu's in-memory transport shows what reaches the broker, with no broker running.
    queue = f"kalpla-test-{uuid.uuid4().hex[:12]}"
    app = make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support},
                   celery_broker_url="redis://127.0.0.1:1/6", celery_queue=queue)
    kalpla = app.extensions["kalpla"]
    runner = kalpla.jobs.runner
    runner.celery.conf.broker_url = "memory://"
    left = add_job(kalpla, status="queued", age=HOUR, upto=1)
    add_job(kalpla, status="queued", upto=1)  # fresh: its message is still on its way

    assert kalpla.jobs.reap().dispatched == [left]
    with runner.celery.connection_for_read() as conn:
        received = conn.SimpleQueue(queue)
        try:
            message = received.get(timeout=2)
            assert message.decode()[0] == [left]
            message.ack()
            with pytest.raises(received.Empty):
                received.get(timeout=0.2)
        finally:
            received.close()
    assert row(kalpla, left).status == "queued"  # a worker runs it, not this process


def test_no_sweeper_with_celery(make_app):
    app = make_app(plugins=[], celery_broker_url="redis://127.0.0.1:1/6")
    jobs = app.extensions["kalpla"].jobs
    assert jobs.start_sweeper() is False and jobs._sweeper is None


def test_kalpla_jobs_reap_command(make_app):
    apps: list[Any] = []

    def factory() -> Any:
        apps.append(make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support}))
        return apps[-1]

    seed = factory().extensions["kalpla"]
    t = tag()
    lost = add_job(seed, status="running", age=2 * HOUR)
    again = add_job(seed, "jobtest.recount", status="running", age=2 * HOUR, upto=1)
    left = add_job(seed, status="queued", age=timedelta(minutes=2), upto=2, tag=t)

    result = CliRunner().invoke(make_cli(create_app=factory),
                                ["jobs", "reap", "--queued-grace", "60"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "failed: 1, queued again: 1, handed to a worker: 2", "Running them here…"]
    # The in-process runner ran them in the command, which waited for them.
    assert row(seed, lost).status == "failed"
    assert row(seed, again).status == "succeeded"
    assert row(seed, left).status == "succeeded" and jobs_support.RUNS.count(t) == 1

    result = CliRunner().invoke(make_cli(create_app=factory), ["jobs", "reap"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "failed: 0, queued again: 0, handed to a worker: 0\n"
    assert CliRunner().invoke(make_cli(create_app=factory),
                              ["jobs", "reap", "--queued-grace", "-1"]).exit_code == 2


def test_kalpla_jobs_reap_waits_for_its_jobs_no_longer_than_max_wait(make_app):
    apps: list[Any] = []

    def factory() -> Any:
        apps.append(make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support}))
        return apps[-1]

    seed = factory().extensions["kalpla"]
    held = jobs_support.pause("reap-wait")
    left = add_job(seed, status="queued", age=timedelta(minutes=10), upto=2, tag=tag(),
                   pause="reap-wait")
    try:
        result = CliRunner().invoke(make_cli(create_app=factory),
                                    ["jobs", "reap", "--max-wait", "1"])
        assert held.reached.is_set()
        assert result.exit_code == 1, result.output
        assert "still running after 1 s" in result.output
        assert row(seed, left).status == "running"
    finally:
        held.resume.set()
    assert CliRunner().invoke(make_cli(create_app=factory),
                              ["jobs", "reap", "--max-wait", "0"]).exit_code == 2


# --- declaring and configuring ---------------------------------------------------------------

def test_job_timeout_setting(tmp_path):
    env = {"KALPLA_INSTANCE_PATH": str(tmp_path), "KALPLA_SECRET_KEY": "k" * 32}
    assert load_settings(environ=env).job_timeout == 3600
    assert load_settings(environ={**env, "KALPLA_JOB_TIMEOUT": "90"}).job_timeout == 90
    for bad in ("0", "soon"):
        with pytest.raises(ConfigError, match="KALPLA_JOB_TIMEOUT"):
            load_settings(environ={**env, "KALPLA_JOB_TIMEOUT": bad})


def test_register_checks_the_spec(kalpla):
    def fn(ctx: Any) -> None:
        return None

    kalpla.jobs.register("core", "core.spec", JobSpec(fn, timeout=30, retry_safe=True))
    kalpla.jobs.register("core", "core.keywords", fn, timeout=45)
    assert (kalpla.jobs.timeout_of("core.spec"), kalpla.jobs.is_retry_safe("core.spec")) == (
        30, True)
    assert (kalpla.jobs.timeout_of("core.keywords"),
            kalpla.jobs.is_retry_safe("core.keywords")) == (45, False)
    assert kalpla.jobs.functions["core.spec"] is fn
    for bad in (0, -5, 1.5, True, "60"):
        with pytest.raises(ValueError, match=r"timeout of job 'core\.bad'"):
            kalpla.jobs.register("core", "core.bad", JobSpec(fn, timeout=bad))
    with pytest.raises(TypeError, match="not callable"):
        kalpla.jobs.register("core", "core.bad", JobSpec("nope"))  # type: ignore[arg-type]
