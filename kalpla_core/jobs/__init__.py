"""One job API for background work, whatever runs it (in-process threads or Celery).

Enqueue with :meth:`Jobs.enqueue` inside a unit of work; the job is handed to the runner only
after that transaction commits (never if it rolls back), and its record (status, progress,
result, error) is readable at ``/api/v1/jobs/{id}`` by its owner.

A job function is called as ``fn(ctx, **params)``. What it returns (JSON) becomes the result;
raising :class:`JobError` fails the job with that message for its owner; any other exception
fails it with a generic message, and the exception is logged, never shown.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from kalpla_core.db import queue_after_commit, utcnow
from kalpla_core.jobs.models import Job

if TYPE_CHECKING:
    from flask import Flask

    from kalpla_core.app import Kalpla

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
        """Record progress (0–100), committed at once so readers see it while the job runs."""
        with self._kalpla.db.session() as s:
            s.execute(update(Job).where(Job.id == self.job_id, Job.status == "running").values(
                progress=max(0, min(100, int(percent))), progress_message=message[:500]))


JobFunction = Callable[..., Any]


class Jobs:
    """The app's job registry and the service behind the job API."""

    def __init__(self, app: Flask, kalpla: Kalpla) -> None:
        self.app = app
        self.kalpla = kalpla
        self.functions: dict[str, JobFunction] = {}
        self._runner: Any = None
        self._runner_lock = threading.Lock()

    def register(self, plugin: str, name: str, fn: JobFunction) -> None:
        if plugin != "core" and not name.startswith(f"{plugin}."):
            raise ValueError(f"job {name!r} of plugin {plugin!r} must be named '{plugin}.…'")
        if name in self.functions:
            raise ValueError(f"job {name!r} is registered twice")
        if not callable(fn):
            raise TypeError(f"job {name!r} of plugin {plugin!r} is not callable")
        self.functions[name] = fn

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
        with self.kalpla.db.session() as s:
            claimed = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                                .values(status="running", started_at=utcnow())).rowcount
            job = s.get(Job, job_id) if claimed else None
            if job is None:
                return False
            name, params = job.name, dict(job.params)
            ctx = JobContext(self.app, job_id, job.owner_id, job.institution_id, self.kalpla)
        values: dict[str, Any]
        try:
            fn = self.functions.get(name)
            if fn is None:
                raise JobError(f"no job named {name!r} is registered in this process")
            result = fn(ctx, **params)
            # A result that isn't JSON fails the job here rather than its final UPDATE.
            json.dumps(result, allow_nan=False)
            values = {"status": "succeeded", "progress": 100, "result": result}
        except JobError as exc:
            values = {"status": "failed", "error": str(exc) or "The job failed."}
        except Exception:
            log.exception("job failed", extra={"job_id": job_id, "job": name})
            values = {"status": "failed", "error": INTERNAL_ERROR}
        self._finish(job_id, "running", values)
        return True

    def _finish(self, job_id: str, expected: str, values: dict[str, Any]) -> None:
        with self.kalpla.db.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == expected)
                      .values(finished_at=utcnow(), **values))

    def wait(self, timeout: float | None = 30) -> bool:
        """Wait for jobs submitted by this process to finish (in-process runner only)."""
        return self._runner.wait(timeout) if self._runner is not None else True

    def shutdown(self, timeout: float | None = 30) -> bool:
        """Let jobs running here finish (up to ``timeout``) and release the runner's threads
        and connections; call when the app is done."""
        return self._runner.shutdown(timeout) if self._runner is not None else True


def init_jobs(app: Flask, kalpla: Kalpla) -> None:
    kalpla.jobs = Jobs(app, kalpla)
