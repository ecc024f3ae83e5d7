"""One job API for background work, whatever runs it (in-process threads or Celery).

Enqueue with :meth:`Jobs.enqueue` inside a unit of work; the job is handed to the runner only
after that transaction commits, and its record (status, progress, result, error) is readable
at ``/api/v1/jobs/{id}`` by its owner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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

    def session(self) -> Any:
        """A unit of work (context manager) on the app's database."""
        return self._kalpla.db.session()

    def progress(self, percent: int, message: str = "") -> None:
        """Record progress (0–100), committed at once so readers see it while the job runs."""
        with self._kalpla.db.session() as s:
            s.execute(update(Job).where(Job.id == self.job_id).values(
                progress=max(0, min(100, int(percent))), progress_message=message[:500]))


JobFunction = Callable[..., Any]


class Jobs:
    def __init__(self, app: Flask, kalpla: Kalpla) -> None:
        self.app = app
        self.kalpla = kalpla
        self.functions: dict[str, JobFunction] = {}
        self._runner: Any = None

    def register(self, plugin: str, name: str, fn: JobFunction) -> None:
        if plugin != "core" and not name.startswith(f"{plugin}."):
            raise ValueError(f"job {name!r} of plugin {plugin!r} must be named '{plugin}.…'")
        if name in self.functions:
            raise ValueError(f"job {name!r} is registered twice")
        self.functions[name] = fn

    @property
    def backend(self) -> str:
        return "celery" if self.kalpla.settings.celery_broker_url else "inprocess"

    @property
    def runner(self) -> Any:
        if self._runner is None:
            self._runner = self.kalpla.providers.get("jobs", self.backend, self.app)
        return self._runner

    def enqueue(self, session: Session, name: str, params: dict[str, Any] | None = None,
                owner_id: str | None = None, institution_id: str | None = None) -> Job:
        if name not in self.functions:
            raise LookupError(f"no job named {name!r}")
        job = Job(name=name, params=params or {}, owner_id=owner_id,
                  institution_id=institution_id, status="queued")
        session.add(job)
        session.flush()
        job_id = job.id
        queue_after_commit(session, lambda: self.runner.submit(job_id))
        return job

    def run(self, job_id: str) -> None:
        """Run one queued job in this process. Claiming is atomic, so a job delivered twice
        (Celery's at-least-once delivery) runs once."""
        db = self.kalpla.db
        with db.session() as s:
            claimed = s.execute(update(Job).where(Job.id == job_id, Job.status == "queued")
                                .values(status="running", started_at=utcnow())).rowcount
            job = s.get(Job, job_id) if claimed else None
            if job is None:
                return
            name, params = job.name, dict(job.params)
            ctx = JobContext(self.app, job_id, job.owner_id, job.institution_id, self.kalpla)
        values: dict[str, Any]
        try:
            fn = self.functions.get(name)
            if fn is None:
                raise JobError(f"no job named {name!r} is registered in this process")
            result = fn(ctx, **params)
            values = {"status": "succeeded", "progress": 100, "result": result}
        except JobError as exc:
            values = {"status": "failed", "error": str(exc)}
        except Exception:
            log.exception("job failed", extra={"job_id": job_id, "job": name})
            values = {"status": "failed", "error": "The job failed with an internal error; "
                                                   "it has been logged."}
        with db.session() as s:
            s.execute(update(Job).where(Job.id == job_id).values(finished_at=utcnow(),
                                                                  **values))


def init_jobs(app: Flask, kalpla: Kalpla) -> None:
    kalpla.jobs = Jobs(app, kalpla)
