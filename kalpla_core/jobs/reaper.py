"""Jobs that outlive their worker.

A worker that dies mid-run leaves its job ``running``; a process that stops (restart, deploy)
with jobs still waiting in its in-process pool leaves them ``queued``. :func:`reap` settles
both, and is safe to run from several processes at once:

- a running job whose last heartbeat (:mod:`kalpla_core.jobs.heartbeat`) is older than
  ``LOST_AFTER`` seconds has lost its worker: it is failed with ``worker lost: no heartbeat
  for N s``, or, when it is retry-safe and was not queued again before, queued again once;
- a running job still beating but started longer ago than its timeout (``JobSpec.timeout``,
  else ``KALPLA_JOB_TIMEOUT``) is failed with ``timed out: no result after N s`` (never queued
  again: its run may still be going). The timeout bounds a run's whole length;
- a running job with no heartbeat at all was claimed by a worker that does not beat (one
  older than heartbeats): judged by its timeout alone, as ``worker lost: no result after N s``.

Each change is an UPDATE guarded by ``status = 'running'`` and by the condition it acts on
(``heartbeat_at < cutoff``, or ``started_at < cutoff``), so of two reapers only one acts, a
job claimed again meanwhile is left alone, and a beat that lands between the sweep's read and
its UPDATE wins over the reap (on PostgreSQL the UPDATE re-reads a row changed under it);
- a job queued longer than a grace period is handed to the runner again. No guard is needed:
  a job runs only once its worker has claimed it atomically, so a job dispatched twice (by
  two sweeps, or by its first process and a sweep) still runs once.

It runs in a :class:`Sweeper` thread of each serving process with the in-process runner, at
the start-up of Celery workers, and from ``kalpla jobs reap`` (cron).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import ColumnElement, and_, or_, select, true, update
from sqlalchemy.orm import Session

from kalpla_core.db import utcnow
from kalpla_core.jobs import heartbeat
from kalpla_core.jobs.models import Job

if TYPE_CHECKING:
    from kalpla_core.jobs import Jobs

log = logging.getLogger("kalpla.jobs")

QUEUED_GRACE = 300  # seconds a job may wait in a queue before it is handed over again
SWEEP_INTERVAL = 300  # seconds between the sweeps of a serving process
QUEUED_BATCH = 500  # queued jobs handed over per sweep, oldest first
RUNNING_BATCH = 500  # lost runs settled per sweep, oldest first; the rest by the next sweeps


def lost_message(timeout: int) -> str:
    return f"worker lost: no result after {timeout} s"


def silent_message(lost_after: int) -> str:
    return f"worker lost: no heartbeat for {lost_after} s"


def timed_out_message(timeout: int) -> str:
    return f"timed out: no result after {timeout} s"


@dataclass
class ReapReport:
    """Ids of the jobs one :func:`reap` failed, queued again, and handed to the runner."""

    failed: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    dispatched: list[str] = field(default_factory=list)


def reap(jobs: Jobs, now: datetime | None = None, queued_grace: int = QUEUED_GRACE) -> ReapReport:
    now = now or utcnow()
    report = ReapReport()
    with jobs.kalpla.db.session() as s:
        # Each kind read through the (status, created_at) index, oldest first and bounded: a
        # backlog of queued jobs (workers down for hours) is never read whole. Queued ones
        # first, so the runs queued again below are not among them (they are handed over
        # once, below).
        left = list(s.scalars(select(Job.id).where(
            Job.status == "queued", Job.created_at < now - timedelta(seconds=queued_grace))
            .order_by(Job.created_at, Job.id).limit(QUEUED_BATCH)))
        silent_since = now - timedelta(seconds=heartbeat.LOST_AFTER)
        running = s.execute(select(Job.id, Job.name, Job.error, Job.heartbeat_at).where(
            Job.status == "running",
            or_(Job.heartbeat_at < silent_since, _past_timeout(jobs, now)))
            .order_by(Job.created_at, Job.id).limit(RUNNING_BATCH)).all()
        for job_id, name, error, beat_at in running:
            _settle_lost_run(s, jobs, now, job_id, name, error, beat_at, report)
    for job_id in [*report.requeued, *left]:
        try:
            jobs.runner.submit(job_id)
        except Exception:
            # Unlike a new job's, a failed hand-over leaves the job queued for the next sweep:
            # the runner that first took it may still run it.
            log.exception("queued job could not be handed to a worker", extra={"job_id": job_id})
            break
        report.dispatched.append(job_id)
    return report


def _past_timeout(jobs: Jobs, now: datetime) -> ColumnElement[bool]:
    """Runs past their own job's timeout: only those fill a batch, so runs still within a
    longer timeout never crowd out lost ones. Jobs unknown to this process get the default
    timeout."""
    default = int(jobs.kalpla.settings.job_timeout)
    own = {name: jobs.timeout_of(name) for name in jobs.specs}
    special = {name: t for name, t in own.items() if t != default}
    clauses = [and_(Job.name == name, Job.started_at < now - timedelta(seconds=t))
               for name, t in sorted(special.items())]
    clauses.append(and_(Job.name.not_in(sorted(special)) if special else true(),
                        Job.started_at < now - timedelta(seconds=default)))
    return or_(*clauses)


def _settle_lost_run(s: Session, jobs: Jobs, now: datetime, job_id: str, name: str,
                     error: str | None, beat_at: datetime | None, report: ReapReport) -> None:
    timeout = jobs.timeout_of(name)
    silent_since = now - timedelta(seconds=heartbeat.LOST_AFTER)
    past_timeout = Job.started_at < now - timedelta(seconds=timeout)
    if beat_at is None:  # a worker that does not beat: its timeout alone tells
        lost: ColumnElement[bool] | None = and_(Job.heartbeat_at.is_(None), past_timeout)
        message = lost_message(timeout)
    elif beat_at < silent_since:
        lost, message = Job.heartbeat_at < silent_since, silent_message(heartbeat.LOST_AFTER)
    else:
        lost, message = None, ""
    if lost is not None and _give_up_on_lost_run(s, jobs, now, job_id, name, error, lost,
                                                 message, report):
        return
    # Beating (maybe since a beat that landed after the read) yet past its timeout: the run
    # may still be going, so it is failed, never queued again to run twice at once.
    message = timed_out_message(timeout)
    if s.execute(update(Job).where(Job.id == job_id, Job.status == "running", past_timeout)
                 .values(status="failed", finished_at=now, error=message)).rowcount:
        log.warning("job failed: %s", message, extra={"job_id": job_id, "job": name})
        report.failed.append(job_id)


def _give_up_on_lost_run(s: Session, jobs: Jobs, now: datetime, job_id: str, name: str,
                         error: str | None, lost: ColumnElement[bool], message: str,
                         report: ReapReport) -> bool:
    """Queue again (retry-safe, once) or fail a run whose worker is lost, while ``lost`` still
    holds: False when a beat (or another reaper) got there first."""
    stale = (Job.id == job_id, Job.status == "running", lost)
    # A running job carries an error only after it was queued again: once is enough.
    if jobs.is_retry_safe(name) and error is None and s.execute(
            update(Job).where(*stale, Job.error.is_(None)).values(
                status="queued", started_at=None, heartbeat_at=None, progress=0,
                progress_message="", error=f"{message}; queued again")).rowcount:
        log.warning("job queued again: %s", message, extra={"job_id": job_id, "job": name})
        report.requeued.append(job_id)
        return True
    if s.execute(update(Job).where(*stale).values(
            status="failed", finished_at=now, error=message)).rowcount:
        log.warning("job failed: %s", message, extra={"job_id": job_id, "job": name})
        report.failed.append(job_id)
        return True
    return False


class Sweeper:
    """Reaps at once, then every ``interval`` seconds, in a daemon thread until stopped."""

    def __init__(self, jobs: Jobs, interval: float) -> None:
        if interval <= 0:
            raise ValueError(f"sweep interval must be positive, got {interval!r}")
        self.jobs = jobs
        self.interval = interval
        self.sweeps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kalpla-job-sweeper",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with self.jobs.app.app_context():
                    reap(self.jobs)
            except Exception:
                # The database may be down for a while: the next sweep tries again.
                log.exception("job sweep failed")
            self.sweeps += 1
            self._stop.wait(self.interval)

    def stop(self, timeout: float | None = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()
