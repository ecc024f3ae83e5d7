"""One job API for background work, whatever runs it (in-process threads or Celery).

Enqueue with :meth:`Jobs.enqueue` inside a unit of work; the job is handed to the runner only
after that transaction commits (never if it rolls back), and its record (status, progress,
result, error) is readable at ``/api/v1/jobs/{id}`` by its owner.

A job function is called as ``fn(ctx, **params)``. What it returns (JSON) becomes the result;
raising :class:`JobError` fails the job with that message for its owner; any other exception
fails it with a generic message, and the exception is logged, never shown.

A running job's worker refreshes its heartbeat (:mod:`kalpla_core.jobs.heartbeat`). A job whose
worker died stays ``running`` and one queued by a process that stopped stays ``queued``:
:meth:`Jobs.reap` (see :mod:`kalpla_core.jobs.reaper`) fails or queues again the first once its
heartbeats have stopped (or its timeout has passed) and hands the second to a worker again.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from kalpla_core.db import queue_after_commit, utcnow
from kalpla_core.jobs.models import Job

if TYPE_CHECKING:
    from flask import Flask

    from kalpla_core.app import Kalpla
    from kalpla_core.jobs.reaper import ReapReport, Sweeper

log = logging.getLogger("kalpla.jobs")

INTERNAL_ERROR = "The job failed with an internal error; it has been logged."
NOT_STARTED = "The job could not be handed to a worker; it has been logged."


class JobError(Exception):
    """Raised by a job function to fail with a message meant for the job's owner."""


@dataclass
class JobContext:
    """What a job function receives besides its parameters."""

    app: Flask
    job_id: str
    owner_id: str | None
    institution_id: str | None
    _kalpla: Kalpla

    def session(self) -> AbstractContextManager[Session]:
        """A unit of work on the app's database: committed on success, else rolled back."""
        return self._kalpla.db.session()

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0–100), committed at once so readers see it while the job runs;
        it is a heartbeat too."""
        with self._kalpla.db.session() as s:
            s.execute(update(Job).where(Job.id == self.job_id, Job.status == "running").values(
                progress=max(0, min(100, int(percent))), progress_message=message[:500],
                heartbeat_at=utcnow()))


JobFunction = Callable[..., Any]


@dataclass(frozen=True)
class JobSpec:
    """A job function and how to treat a run whose worker is lost.

    ``timeout``: seconds a run may take before its worker counts as lost (default
    ``KALPLA_JOB_TIMEOUT``). ``retry_safe``: running the job again after a partial run does no
    harm (it is idempotent), so a lost run is queued again once instead of failing.
    """

    fn: JobFunction
    timeout: int | None = None
    retry_safe: bool = False


class Jobs:
    """The app's job registry and the service behind the job API."""

    def __init__(self, app: Flask, kalpla: Kalpla) -> None:
        self.app = app
        self.kalpla = kalpla
        self.functions: dict[str, JobFunction] = {}
        self.specs: dict[str, JobSpec] = {}
        self._runner: Any = None
        self._runner_lock = threading.Lock()
        self._sweeper: Sweeper | None = None
        self._running: set[str] = set()  # claimed by this process and not finished yet
        self._running_lock = threading.Lock()

    def register(self, plugin: str, name: str, fn: JobFunction | JobSpec, *,
                 timeout: int | None = None, retry_safe: bool = False) -> None:
        """Register a job function, or a :class:`JobSpec` (then ``timeout`` and
        ``retry_safe`` come from it)."""
        spec = fn if isinstance(fn, JobSpec) else JobSpec(fn, timeout, retry_safe)
        if plugin != "core" and not name.startswith(f"{plugin}."):
            raise ValueError(f"job {name!r} of plugin {plugin!r} must be named '{plugin}.…'")
        if name in self.functions:
            raise ValueError(f"job {name!r} is registered twice")
        if not callable(spec.fn):
            raise TypeError(f"job {name!r} of plugin {plugin!r} is not callable")
        if spec.timeout is not None and (
                isinstance(spec.timeout, bool) or not isinstance(spec.timeout, int)
                or spec.timeout < 1):
            raise ValueError(f"timeout of job {name!r} must be a whole number of seconds ≥ 1, "
                             f"got {spec.timeout!r}")
        self.functions[name] = spec.fn
        self.specs[name] = spec

    def timeout_of(self, name: str) -> int:
        """Seconds a run of ``name`` may take before its worker counts as lost."""
        spec = self.specs.get(name)
        if spec is not None and spec.timeout is not None:
            return spec.timeout
        return int(self.kalpla.settings.job_timeout)

    def is_retry_safe(self, name: str) -> bool:
        spec = self.specs.get(name)
        return spec is not None and spec.retry_safe

    @property
    def backend(self) -> str:
        return "celery" if self.kalpla.settings.celery_broker_url else "inprocess"

    @property
    def runner(self) -> Any:
        """The ``jobs`` provider chosen by configuration, built on first use."""
        with self._runner_lock:
            if self._runner is None:
                self._runner = self.kalpla.providers.get("jobs", self.backend, self.app)
            return self._runner

    def enqueue(self, session: Session, name: str, params: dict[str, Any] | None = None,
                owner_id: str | None = None, institution_id: str | None = None) -> Job:
        """Record a queued job in ``session``'s transaction; it is submitted once that
        transaction commits."""
        if name not in self.functions:
            raise LookupError(f"no job named {name!r}")
        params = dict(params or {})
        try:
            json.dumps(params, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"parameters of job {name!r} must be JSON: {exc}") from exc
        job = Job(name=name, params=params, owner_id=owner_id,
                  institution_id=institution_id, status="queued")
        session.add(job)
        session.flush()
        job_id = job.id
        queue_after_commit(session, lambda: self._submit(job_id))
        return job

    def _submit(self, job_id: str) -> None:
        # Runs after the caller's commit: raising here would turn a committed request into
        # an error, so a runner that refuses the job (broker down) fails the job instead.
        try:
            self.runner.submit(job_id)
        except Exception:
            log.exception("job could not be submitted", extra={"job_id": job_id})
            try:
                self._finish(job_id, "queued", {"status": "failed", "error": NOT_STARTED})
            except Exception:
                log.exception("job could not be marked failed", extra={"job_id": job_id})

    def run(self, job_id: str) -> bool:
        """Run one queued job in this process; False if it was not queued (unknown, or
        already claimed). Claiming is atomic, so a job delivered twice (Celery delivers at
        least once) runs once."""
        now = utcnow()
        with self.kalpla.db.session() as s:
            claimed = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                                .values(status="running", started_at=now,
                                        heartbeat_at=now)).rowcount
            job = s.get(Job, job_id) if claimed else None
            if job is None:
                return False
            name, params = job.name, dict(job.params)
            ctx = JobContext(self.app, job_id, job.owner_id, job.institution_id, self.kalpla)
        with self._running_lock:
            self._running.add(job_id)
        try:
            self._execute(job_id, name, params, ctx)
        finally:
            with self._running_lock:
                self._running.discard(job_id)
        return True

    def running_ids(self) -> set[str]:
        """Ids of the jobs this process has claimed and not finished: those its beat keeps
        alive."""
        with self._running_lock:
            return set(self._running)

    def _execute(self, job_id: str, name: str, params: dict[str, Any],
                 ctx: JobContext) -> None:
        values: dict[str, Any]
        try:
            fn = self.functions.get(name)
            if fn is None:
                raise JobError(f"no job named {name!r} is registered in this process")
            result = fn(ctx, **params)
            # A result that isn't JSON fails the job here rather than its final UPDATE.
            json.dumps(result, allow_nan=False)
            # error may tell of an earlier run whose worker was lost: this one succeeded.
            values = {"status": "succeeded", "progress": 100, "result": result, "error": None}
        except JobError as exc:
            values = {"status": "failed", "error": str(exc) or "The job failed."}
        except Exception:
            log.exception("job failed", extra={"job_id": job_id, "job": name})
            values = {"status": "failed", "error": INTERNAL_ERROR}
        self._finish(job_id, "running", values)

    def _finish(self, job_id: str, expected: str, values: dict[str, Any]) -> None:
        with self.kalpla.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == expected)
                      .values(finished_at=utcnow(), **values))

    def reap(self, now: datetime | None = None, queued_grace: int | None = None) -> ReapReport:
        """Fail (or queue again, once, when retry-safe) the running jobs whose heartbeats have
        stopped, fail those past their timeout, and hand the jobs queued longer than
        ``queued_grace`` seconds to the runner again."""
        from kalpla_core.jobs.reaper import QUEUED_GRACE, reap

        return reap(self, now, QUEUED_GRACE if queued_grace is None else queued_grace)

    def start_sweeper(self, interval: float | None = None) -> bool:
        """With the in-process runner, reap now and then every ``interval`` seconds (default
        5 minutes) in a background thread until :meth:`shutdown`; call it in each serving
        process. False (and nothing started) with Celery, whose workers reap at start-up."""
        from kalpla_core.jobs.reaper import SWEEP_INTERVAL, Sweeper

        if self.backend != "inprocess":
            return False
        with self._runner_lock:
            if self._sweeper is None:
                self._sweeper = Sweeper(self, SWEEP_INTERVAL if interval is None else interval)
                self._sweeper.start()
        return True

    def wait(self, timeout: float | None = 30) -> bool:
        """Wait for jobs submitted by this process to finish (in-process runner only)."""
        return self._runner.wait(timeout) if self._runner is not None else True

    def shutdown(self, timeout: float | None = 30) -> bool:
        """Stop the sweeper, let jobs running here finish (up to ``timeout``) and release the
        runner's threads and connections; call when the app is done."""
        with self._runner_lock:
            sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.stop(timeout)
        return self._runner.shutdown(timeout) if self._runner is not None else True


def init_jobs(app: Flask, kalpla: Kalpla) -> None:
    kalpla.jobs = Jobs(app, kalpla)
