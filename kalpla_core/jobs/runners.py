"""Job runners: providers of the ``jobs`` port.

A runner takes the id of a committed, queued job and gets :meth:`Jobs.run` called with it,
here or in another process. Its interface: ``submit(job_id)``, ``wait(timeout) -> bool``
(every job submitted here has finished) and ``shutdown()``. Whatever runs :meth:`Jobs.run`
also beats the jobs it runs (:class:`~kalpla_core.jobs.heartbeat.Beat`), else the reaper
takes them for lost once ``LOST_AFTER`` has passed.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from typing import Any

from kalpla_core.jobs import heartbeat

log = logging.getLogger("kalpla.jobs")


class InProcessRunner:
    """A small thread pool in the web process: the embedded default, no broker needed. One
    beat thread, started with the first job, keeps the heartbeats of all the jobs it runs."""

    def __init__(self, app: Any, workers: int = 2, beat_interval: float | None = None) -> None:
        self.app = app
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kalpla-job")
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()
        jobs = app.extensions["kalpla"].jobs
        self.beat = heartbeat.Beat(jobs, jobs.running_ids, beat_interval)
        self._beating = False

    def submit(self, job_id: str) -> None:
        future = self._pool.submit(self._run, job_id)
        with self._lock:
            if not self._beating:
                self.beat.start()
                self._beating = True
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(self, job_id: str) -> None:
        try:
            with self.app.app_context():
                self.app.extensions["kalpla"].jobs.run(job_id)
        except Exception:
            # Jobs.run records a job's own failures; this is the runner itself failing
            # (database unreachable, say), which would otherwise vanish inside the future.
            log.exception("job runner failed", extra={"job_id": job_id})

    def wait(self, timeout: float | None = 30) -> bool:
        """Block until every submitted job has finished, including jobs that those jobs
        submitted (CLI and tests). False if some are still running after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = {f for f in self._futures if not f.done()}
            if not pending:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            wait_for(pending, timeout=remaining)

    def shutdown(self, timeout: float | None = 30) -> bool:
        """Let submitted jobs finish (up to ``timeout``), then stop the pool's threads.
        Jobs still running after that are not waited for; later submits raise."""
        finished = self.wait(timeout)
        self._pool.shutdown(wait=finished, cancel_futures=True)
        # Jobs still running past ``timeout`` stop beating too: the process is going away.
        self.beat.stop(timeout)
        return finished


class CeleryRunner:
    """Sends job ids to Celery workers (see :mod:`kalpla_core.jobs.celery_app`)."""

    def __init__(self, app: Any) -> None:
        from kalpla_core.jobs.celery_app import make_celery

        settings = app.extensions["kalpla"].settings
        self.celery = make_celery(settings.celery_broker_url, settings.celery_queue)

    def submit(self, job_id: str) -> None:
        from kalpla_core.jobs.celery_app import TASK_NAME

        self.celery.send_task(TASK_NAME, args=[job_id])

    def wait(self, timeout: float | None = 30) -> bool:
        """Workers run elsewhere; callers poll the job record instead."""
        return True

    def shutdown(self, timeout: float | None = 30) -> bool:
        self.celery.close()  # releases the broker connections
        return True
