"""Heartbeats: how a worker shows that the jobs it runs are still alive.

A job's ``heartbeat_at`` is set when a worker claims it and refreshed by each
``ctx.progress()`` and by a :class:`Beat` thread every :data:`BEAT_INTERVAL` seconds while the
job runs (one per in-process runner, beating every job it runs; one per Celery task). The
reaper counts a run as lost once its last heartbeat is older than :data:`LOST_AFTER`, however
recent its start, and leaves a beating run alone until its timeout.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING

from sqlalchemy import update

from kalpla_core.db import utcnow
from kalpla_core.jobs.models import Job

if TYPE_CHECKING:
    from kalpla_core.jobs import Jobs

log = logging.getLogger("kalpla.jobs")

BEAT_INTERVAL = 30  # seconds between two beats of a running job
LOST_AFTER = 4 * BEAT_INTERVAL  # seconds without a beat before a run counts as lost


def beat(jobs: Jobs, job_ids: Collection[str]) -> int:
    """Refresh the heartbeat of those of ``job_ids`` still running; how many were."""
    if not job_ids:
        return 0
    with jobs.kalpla.db.session() as s:
        # Guarded by status: a beat never revives a job that was reaped or has finished.
        return s.execute(update(Job).where(Job.id.in_(sorted(job_ids)), Job.status == "running")
                         .values(heartbeat_at=utcnow())).rowcount


class Beat:
    """Beats the jobs ``job_ids()`` names every ``interval`` seconds in a daemon thread until
    stopped; usable as a context manager around a run."""

    def __init__(self, jobs: Jobs, job_ids: Callable[[], Collection[str]],
                 interval: float | None = None) -> None:
        interval = BEAT_INTERVAL if interval is None else interval
        if interval <= 0:
            raise ValueError(f"beat interval must be positive, got {interval!r}")
        self.jobs = jobs
        self.job_ids = job_ids
        self.interval = interval
        self.beats = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kalpla-job-beat", daemon=True)

    def start(self) -> Beat:
        self._thread.start()
        return self

    def _loop(self) -> None:
        # The claim set the first heartbeat: the first beat is one interval later.
        while not self._stop.wait(self.interval):
            try:
                ids = list(self.job_ids())
                if ids:
                    with self.jobs.app.app_context():
                        beat(self.jobs, ids)
            except Exception:
                # The database may be down for a moment: the next beat tries again, well
                # before the reaper would count the run as lost.
                log.exception("job heartbeat failed")
            self.beats += 1

    def stop(self, timeout: float | None = 30) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __enter__(self) -> Beat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
