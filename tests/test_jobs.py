"""The job API: enqueue after commit, run once, progress, results and failures, who may read a
job, and the Celery backend with a real worker process."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kalpla_core.config import ConfigError
from kalpla_core.jobs import INTERNAL_ERROR, NOT_STARTED
from kalpla_core.jobs.celery_app import TASK_NAME, make_worker
from kalpla_core.jobs.models import Job
from kalpla_core.jobs.runners import CeleryRunner, InProcessRunner
from kalpla_core.testing import Factories
from tests import jobs_support

pytest_plugins = ["pytester"]

PROBLEM = "application/problem+json"
BROKER_URL = os.environ.get("KALPLA_TEST_CELERY_BROKER_URL", "redis://127.0.0.1:6379/7")


@pytest.fixture
def japp(make_app: Callable[..., Any]) -> Any:
    return make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support})


@pytest.fixture
def kalpla(japp: Any) -> Any:
    return japp.extensions["kalpla"]


@pytest.fixture
def jf(japp: Any) -> Factories:
    return Factories(japp)


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


def job_row(kalpla: Any, job_id: str) -> Job | None:
    with kalpla.db.session() as s:
        return s.get(Job, job_id)


def tag() -> str:
    return uuid.uuid4().hex


# --- in-process runner ----------------------------------------------------------------------

def test_job_is_submitted_only_after_commit_and_succeeds(kalpla, submitted):
    assert isinstance(kalpla.jobs.runner, InProcessRunner)
    t = tag()
    with kalpla.db.session() as s:
        job = kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 3, "tag": t})
        s.flush()
        job_id = job.id
        assert submitted == []
    assert submitted == [job_id]
    assert kalpla.jobs.wait(10)

    done = job_row(kalpla, job_id)
    assert done is not None
    assert done.status == "succeeded"
    assert done.result == {"total": 6, "pid": os.getpid(), "owner_id": None,
                           "institution_id": None}
    assert (done.progress, done.progress_message) == (100, "counted 3 of 3")
    assert done.error is None
    assert done.started_at is not None and done.finished_at is not None
    assert done.created_at <= done.started_at <= done.finished_at
    assert jobs_support.RUNS.count(t) == 1


def test_rolled_back_enqueue_never_runs(kalpla, submitted):
    t = tag()
    with pytest.raises(RuntimeError, match="abandon"), kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 1, "tag": t}).id
        raise RuntimeError("abandon")
    assert kalpla.jobs.wait(10)
    assert submitted == []
    assert t not in jobs_support.RUNS
    assert job_row(kalpla, job_id) is None


def test_enqueue_refuses_unknown_jobs_and_non_json_params(kalpla):
    with kalpla.db.session() as s:
        with pytest.raises(LookupError, match=r"jobtest\.nope"):
            kalpla.jobs.enqueue(s, "jobtest.nope")
        with pytest.raises(TypeError, match="must be JSON"):
            kalpla.jobs.enqueue(s, "jobtest.count", {"upto": object()})
        with pytest.raises(TypeError, match="must be JSON"):
            kalpla.jobs.enqueue(s, "jobtest.count", {"upto": float("nan")})
        assert s.query(Job).count() == 0


def test_job_enqueued_in_a_request_runs_after_the_response_commits(japp, kalpla, jf, submitted):
    inst = jf.institution("school", plugins=["jobtest"])
    user = jf.user(roles={inst: ["student"]})
    client = japp.test_client()
    r = client.post("/api/v1/jobtest/counts", json={"upto": 4, "tag": tag()},
                    headers=jf.auth(user, inst))
    assert r.status_code == 202, r.json
    # The body was written before the commit, so the job had not started yet.
    assert r.json["status"] == "queued"
    assert submitted == [r.json["id"]]
    assert kalpla.jobs.wait(10)

    r = client.get(f"/api/v1/jobs/{r.json['id']}", headers=jf.auth(user))
    assert r.status_code == 200
    assert r.json["status"] == "succeeded"
    assert r.json["result"]["total"] == 10
    assert r.json["owner_id"] == r.json["result"]["owner_id"] == user.id
    assert r.json["institution_id"] == r.json["result"]["institution_id"] == inst.id


def test_job_of_a_failed_request_never_runs(japp, kalpla, jf, submitted):
    inst = jf.institution("school", plugins=["jobtest"])
    user = jf.user(roles={inst: ["student"]})
    t = tag()
    r = japp.test_client().post("/api/v1/jobtest/counts",
                                json={"upto": 2, "tag": t, "fail_after": True},
                                headers=jf.auth(user, inst))
    assert r.status_code == 409
    assert r.content_type == PROBLEM
    assert kalpla.jobs.wait(10)
    assert submitted == []
    assert t not in jobs_support.RUNS
    with kalpla.db.session() as s:
        assert s.query(Job).count() == 0


def test_progress_is_readable_while_the_job_runs(japp, kalpla, jf):
    user = jf.user()
    name = tag()
    held = jobs_support.pause(name)
    with kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 4, "pause": name},
                                     owner_id=user.id).id
    assert held.reached.wait(10), "the job did not start"
    client = japp.test_client()
    try:
        r = client.get(f"/api/v1/jobs/{job_id}", headers=jf.auth(user))
        assert r.status_code == 200
        assert r.json["status"] == "running"
        assert (r.json["progress"], r.json["progress_message"]) == (25, "counted 1 of 4")
        assert r.json["started_at"] is not None
        assert r.json["finished_at"] is None and r.json["result"] is None
    finally:
        held.resume.set()
    assert kalpla.jobs.wait(10)
    r = client.get(f"/api/v1/jobs/{job_id}", headers=jf.auth(user))
    assert (r.json["status"], r.json["progress"]) == ("succeeded", 100)
    assert r.json["progress_message"] == "counted 4 of 4"


def test_job_error_message_reaches_the_owner(japp, kalpla, jf):
    user = jf.user()
    with kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, "jobtest.refuse", {"reason": "The file is empty."},
                                     owner_id=user.id).id
    assert kalpla.jobs.wait(10)
    r = japp.test_client().get(f"/api/v1/jobs/{job_id}", headers=jf.auth(user))
    assert r.json["status"] == "failed"
    assert r.json["error"] == "The file is empty."
    assert r.json["result"] is None
    assert r.json["finished_at"] is not None


def test_unexpected_exception_is_logged_not_shown(japp, kalpla, jf, caplog):
    user = jf.user()
    with kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, "jobtest.crash", owner_id=user.id).id
    assert kalpla.jobs.wait(10)
    r = japp.test_client().get(f"/api/v1/jobs/{job_id}", headers=jf.auth(user))
    assert r.json["status"] == "failed"
    assert r.json["error"] == INTERNAL_ERROR
    body = r.get_data(as_text=True)
    for secret in ("hunter2", "db-internal", "RuntimeError", "Traceback"):
        assert secret not in body

    (record,) = [rec for rec in caplog.records if getattr(rec, "job_id", None) == job_id]
    assert record.levelno == logging.ERROR and record.job == "jobtest.crash"
    assert record.exc_info is not None and "hunter2" in str(record.exc_info[1])


def test_result_that_is_not_json_fails_the_job(kalpla, monkeypatch):
    monkeypatch.setitem(kalpla.jobs.functions, "jobtest.count", lambda ctx, **_: {1j})
    with kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 1}).id
    assert kalpla.jobs.wait(10)
    done = job_row(kalpla, job_id)
    assert done is not None
    assert (done.status, done.error, done.result) == ("failed", INTERNAL_ERROR, None)


def test_claiming_is_atomic(japp, kalpla):
    t = tag()
    with kalpla.db.session() as s:  # a queued record, as a broker would deliver it (twice)
        job = Job(name="jobtest.count", params={"upto": 2, "tag": t}, status="queued")
        s.add(job)
        s.flush()
        job_id = job.id

    start = threading.Barrier(2)
    outcomes: list[bool] = []

    def deliver() -> None:
        start.wait(5)
        with japp.app_context():
            outcomes.append(kalpla.jobs.run(job_id))

    threads = [threading.Thread(target=deliver) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(20)
    assert sorted(outcomes) == [False, True]
    assert kalpla.jobs.run(job_id) is False  # a late redelivery
    assert jobs_support.RUNS.count(t) == 1
    done = job_row(kalpla, job_id)
    assert done is not None and done.status == "succeeded"
    assert kalpla.jobs.run(uuid.uuid4().hex) is False  # unknown id: nothing to claim


def test_job_unknown_to_this_process_fails_with_a_message(kalpla):
    with kalpla.db.session() as s:
        job = Job(name="jobtest.removed", params={}, status="queued")
        s.add(job)
        s.flush()
        job_id = job.id
    assert kalpla.jobs.run(job_id) is True
    done = job_row(kalpla, job_id)
    assert done is not None and done.status == "failed"
    assert done.error == "no job named 'jobtest.removed' is registered in this process"


def test_shutdown_stops_the_runner_threads(kalpla):
    with kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 2}).id
    runner = kalpla.jobs.runner
    assert kalpla.jobs.shutdown(timeout=10)
    threads = list(runner._pool._threads)
    assert threads and not any(th.is_alive() for th in threads)
    done = job_row(kalpla, job_id)
    assert done is not None and done.status == "succeeded"

    # After shutdown a new job cannot start; it fails visibly instead of staying queued.
    with kalpla.db.session() as s:
        late = kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 1}).id
    after = job_row(kalpla, late)
    assert after is not None and (after.status, after.error) == ("failed", NOT_STARTED)


def test_harness_waits_for_jobs_and_stops_their_threads(pytester, monkeypatch):
    # An inner session on its own SQLite database: a job still running when its test ends
    # finishes before the tables are emptied, and no runner thread outlives the test.
    monkeypatch.delenv("KALPLA_TEST_DATABASE_URL", raising=False)
    pytester.makepyfile(test_inner="""
        import time

        seen = {}

        def slow(ctx):
            time.sleep(1)
            seen["finished"] = True
            return "done"

        def test_leaves_a_job_running(make_app):
            app = make_app(plugins=[])
            kalpla = app.extensions["kalpla"]
            kalpla.jobs.register("core", "core.slow", slow)
            with kalpla.db.session() as s:
                kalpla.jobs.enqueue(s, "core.slow")
            seen["pool"] = kalpla.jobs.runner._pool
            assert "finished" not in seen

        def test_runner_was_stopped_after_its_job_finished():
            assert seen["finished"]
            threads = seen["pool"]._threads
            assert threads and not any(t.is_alive() for t in threads)
    """)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


# --- HTTP: who may read a job ---------------------------------------------------------------

def add_job(kalpla: Any, owner_id: str | None, institution_id: str | None,
            created_at: datetime | None = None, **values: Any) -> str:
    with kalpla.db.session() as s:
        job = Job(name="jobtest.count", params={"upto": 1}, owner_id=owner_id,
                  institution_id=institution_id, status=values.pop("status", "succeeded"),
                  **values)
        if created_at is not None:
            job.created_at = created_at
        s.add(job)
        s.flush()
        return job.id


def test_who_may_read_a_job(japp, kalpla, jf):
    school, other = jf.institution("school"), jf.institution("other")
    owner = jf.user(roles={school: ["student"]})
    classmate = jf.user(roles={school: ["student"]})
    school_admin = jf.user(roles={school: ["admin"]})
    other_admin = jf.user(roles={other: ["admin"]})
    job_id = add_job(kalpla, owner.id, school.id, result={"total": 1}, progress=100)
    client = japp.test_client()

    r = client.get(f"/api/v1/jobs/{job_id}", headers=jf.auth(owner))
    assert r.status_code == 200
    assert r.json["id"] == job_id and r.json["result"] == {"total": 1}
    assert client.get(f"/api/v1/jobs/{job_id}", headers=jf.auth(school_admin)).status_code == 200

    for stranger in (classmate, other_admin):
        r = client.get(f"/api/v1/jobs/{job_id}", headers=jf.auth(stranger))
        assert r.status_code == 404
        assert r.content_type == PROBLEM
        # Same answer as for a job that does not exist: nothing tells them it does.
        missing = client.get(f"/api/v1/jobs/{uuid.uuid4().hex}", headers=jf.auth(stranger))
        assert missing.status_code == 404 and missing.json["detail"] == r.json["detail"]

    r = client.get(f"/api/v1/jobs/{job_id}")
    assert r.status_code == 401
    assert r.content_type == PROBLEM
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/v1/jobs").status_code == 401


def test_a_job_without_institution_is_its_owners_alone(japp, kalpla, jf):
    school = jf.institution("school")
    owner, admin = jf.user(), jf.user(roles={school: ["admin"]})
    job_id = add_job(kalpla, owner.id, None)
    client = japp.test_client()
    assert client.get(f"/api/v1/jobs/{job_id}", headers=jf.auth(owner)).status_code == 200
    assert client.get(f"/api/v1/jobs/{job_id}", headers=jf.auth(admin)).status_code == 404


def test_listing_own_jobs_newest_first_by_cursor(japp, kalpla, jf):
    owner, other = jf.user(), jf.user()
    base = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    created = [base + timedelta(minutes=m) for m in (0, 1, 2, 2, 3, 4, 5)]  # a tie at 2
    ids = {add_job(kalpla, owner.id, None, created_at=c): c for c in created}
    add_job(kalpla, other.id, None, created_at=base + timedelta(minutes=10))
    expected = sorted(ids, key=lambda i: (ids[i], i), reverse=True)

    client = japp.test_client()
    seen: list[str] = []
    url: str | None = "/api/v1/jobs?limit=3"
    pages = 0
    while url is not None:
        r = client.get(url, headers=jf.auth(owner))
        assert r.status_code == 200, r.json
        pages += 1
        seen += [item["id"] for item in r.json["items"]]
        link = r.headers.get("Link")
        if r.json["next_cursor"] is None:
            assert link is None
            url = None
        else:
            match = re.fullmatch(r'<([^>]+)>; rel="next"', link or "")
            assert match, link
            assert f"cursor={r.json['next_cursor']}" in match.group(1)
            assert "limit=3" in match.group(1)
            url = match.group(1)
    assert pages == 3
    assert seen == expected

    r = client.get("/api/v1/jobs?limit=0", headers=jf.auth(owner))
    assert r.status_code == 422 and r.content_type == PROBLEM
    r = client.get("/api/v1/jobs?cursor=forged.cursor", headers=jf.auth(owner))
    assert r.status_code == 400 and r.content_type == PROBLEM


# --- Celery -----------------------------------------------------------------------------------

def celery_app_with(make_app: Callable[..., Any], broker_url: str) -> tuple[Any, str]:
    queue = f"kalpla-test-{uuid.uuid4().hex[:12]}"
    app = make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support},
                   celery_broker_url=broker_url, celery_queue=queue)
    return app, queue


def test_celery_runner_sends_the_job_id_after_commit(make_app):
    # Kombu's in-memory transport shows what reaches the broker, with no broker running.
    app, queue = celery_app_with(make_app, BROKER_URL)
    kalpla = app.extensions["kalpla"]
    runner = kalpla.jobs.runner
    assert isinstance(runner, CeleryRunner)
    runner.celery.conf.broker_url = "memory://"

    with pytest.raises(RuntimeError), kalpla.db.session() as s:
        kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 1})
        raise RuntimeError("abandon")
    with kalpla.db.session() as s:
        job_id = kalpla.jobs.enqueue(s, "jobtest.count", {"upto": 1}).id

    with runner.celery.connection_for_read() as conn:
        received = conn.SimpleQueue(queue)
        try:
            message = received.get(timeout=2)
            assert message.headers["task"] == TASK_NAME
            args, kwargs, _options = message.decode()
            assert (args, kwargs) == ([job_id], {})
            message.ack()
            with pytest.raises(received.Empty):  # the rolled-back job was never sent
                received.get(timeout=0.2)
        finally:
            received.close()
    queued = job_row(kalpla, job_id)
    assert queued is not None and queued.status == "queued"  # nothing ran in this process


def test_unreachable_broker_fails_the_job_and_not_the_request(make_app, caplog):
    app, _queue = celery_app_with(make_app, "redis://127.0.0.1:1/7")  # nothing listens there
    kalpla = app.extensions["kalpla"]
    jf = Factories(app)
    inst = jf.institution("school", plugins=["jobtest"])
    user = jf.user(roles={inst: ["student"]})
    r = app.test_client().post("/api/v1/jobtest/counts", json={"upto": 1},
                               headers=jf.auth(user, inst))
    assert r.status_code == 202
    failed = job_row(kalpla, r.json["id"])
    assert failed is not None and (failed.status, failed.error) == ("failed", NOT_STARTED)
    assert any(getattr(rec, "job_id", None) == r.json["id"] for rec in caplog.records)


def test_worker_task_runs_the_job_on_its_app(make_app):
    # Another worker app in the same process, on an app without the jobtest plugin, must not
    # capture the task of the next one.
    make_worker(make_app(plugins=[], celery_broker_url=BROKER_URL))
    app, _queue = celery_app_with(make_app, BROKER_URL)
    kalpla = app.extensions["kalpla"]
    task = make_worker(app).tasks[TASK_NAME]
    with kalpla.db.session() as s:
        job = Job(name="jobtest.count", params={"upto": 2}, status="queued")
        s.add(job)
        s.flush()
        job_id = job.id
    task.apply(args=[job_id])  # the task body, run here instead of in a worker
    done = job_row(kalpla, job_id)
    assert done is not None and done.status == "succeeded" and done.result["total"] == 3


def test_worker_needs_a_broker(japp):
    with pytest.raises(ConfigError, match="KALPLA_CELERY_BROKER_URL"):
        make_worker(japp)


def require_redis(url: str) -> Any:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = f"the Redis broker at {url} is not answering ({exc})"
        if os.environ.get("KALPLA_REQUIRE_BACKENDS") == "1":
            pytest.fail(f"{reason}, and KALPLA_REQUIRE_BACKENDS=1")
        pytest.skip(reason)
    return client


def start_worker(settings: dict[str, Any], queue: str, log: Path) -> subprocess.Popen[bytes]:
    """``tests.jobs_worker`` in its own process group, on the test database and ``queue``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALPLA_")}
    env.update({
        "KALPLA_INSTANCE_PATH": settings["instance_path"],
        "KALPLA_DATABASE_URL": settings["database_url"],
        "KALPLA_SECRET_KEY": settings["secret_key"],
        "KALPLA_CELERY_BROKER_URL": BROKER_URL,
        "KALPLA_CELERY_QUEUE": queue,
        "KALPLA_LOG_LEVEL": "WARNING",
    })
    argv = [sys.executable, "-m", "tests.jobs_worker", "--pool=prefork", "--concurrency=1",
            f"--hostname={queue}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, cwd=Path(__file__).parent.parent, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # warm shutdown
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    with suppress(ProcessLookupError):  # its pool processes, should any outlive it
        os.killpg(proc.pid, signal.SIGKILL)


def test_real_celery_worker_runs_jobs(make_app, kalpla_test_settings, tmp_path):
    broker = require_redis(BROKER_URL)
    if kalpla_test_settings["database_url"].endswith(":memory:"):
        pytest.skip("a worker process cannot share an in-memory database")
    app, queue = celery_app_with(make_app, BROKER_URL)
    kalpla = app.extensions["kalpla"]
    assert kalpla.jobs.backend == "celery"
    jf = Factories(app)
    inst = jf.institution("school", plugins=["jobtest"])
    user = jf.user(roles={inst: ["student"]})
    client = app.test_client()
    t = tag()
    log = tmp_path / "worker.log"
    worker = start_worker(kalpla_test_settings, queue, log)
    try:
        r = client.post("/api/v1/jobtest/counts", json={"upto": 5, "tag": t},
                        headers=jf.auth(user, inst))
        assert r.status_code == 202
        counted = r.json["id"]
        with kalpla.db.session() as s:
            refused = kalpla.jobs.enqueue(s, "jobtest.refuse", {"reason": "Not today."},
                                          owner_id=user.id).id

        deadline = time.monotonic() + 60
        states: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            for job_id in (counted, refused):
                states[job_id] = client.get(f"/api/v1/jobs/{job_id}",
                                            headers=jf.auth(user)).json
            if all(s["status"] in ("succeeded", "failed") for s in states.values()):
                break
            if worker.poll() is not None:
                pytest.fail("the worker exited:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        else:
            pytest.fail(f"jobs not finished within 60 s: {states}\n"
                        + log.read_text()[-3000:])

        done = states[counted]
        assert done["status"] == "succeeded", done
        assert done["result"]["total"] == 15
        assert done["result"]["owner_id"] == user.id
        assert done["result"]["institution_id"] == inst.id
        assert (done["progress"], done["progress_message"]) == (100, "counted 5 of 5")
        # It ran in the worker's pool process, not here.
        assert done["result"]["pid"] not in (os.getpid(), worker.pid)
        assert t not in jobs_support.RUNS

        assert (states[refused]["status"], states[refused]["error"]) == ("failed", "Not today.")
    finally:
        stop_worker(worker)
        for key in broker.scan_iter(match=f"*{queue}*"):
            broker.delete(key)


def test_real_celery_worker_reaps_at_start_up(make_app, kalpla_test_settings, tmp_path):
    # Jobs a dead worker left running and a stopped web process left queued (never sent):
    # a worker starting up fails the first and sends the second again, which it then runs.
    broker = require_redis(BROKER_URL)
    if kalpla_test_settings["database_url"].endswith(":memory:"):
        pytest.skip("a worker process cannot share an in-memory database")
    app, queue = celery_app_with(make_app, BROKER_URL)
    kalpla = app.extensions["kalpla"]
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    t = tag()
    with kalpla.db.session() as s:
        lost = Job(name="jobtest.count", params={"upto": 3}, status="running",
                   created_at=long_ago, started_at=long_ago)
        left = Job(name="jobtest.count", params={"upto": 4, "tag": t}, status="queued",
                   created_at=long_ago)
        fresh = Job(name="jobtest.count", params={"upto": 1}, status="running",
                    started_at=datetime.now(UTC))
        s.add_all([lost, left, fresh])
        s.flush()
        lost_id, left_id, fresh_id = lost.id, left.id, fresh.id
    log = tmp_path / "worker.log"
    worker = start_worker(kalpla_test_settings, queue, log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ran = job_row(kalpla, left_id)
            if ran is not None and ran.status in ("succeeded", "failed"):
                break
            if worker.poll() is not None:
                pytest.fail("the worker exited:\n" + log.read_text()[-3000:])
            time.sleep(0.2)
        else:
            pytest.fail("the job left queued did not run within 60 s\n"
                        + log.read_text()[-3000:])
        assert ran.status == "succeeded" and ran.result["total"] == 10
        assert ran.result["pid"] not in (os.getpid(), worker.pid)
        assert t not in jobs_support.RUNS
        failed = job_row(kalpla, lost_id)
        assert failed is not None
        assert (failed.status, failed.error) == ("failed", "worker lost: no result after 3600 s")
        untouched = job_row(kalpla, fresh_id)
        assert untouched is not None and untouched.status == "running"
    finally:
        stop_worker(worker)
        for key in broker.scan_iter(match=f"*{queue}*"):
            broker.delete(key)
