"""Job runners: providers of the ``jobs`` port."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any


class InProcessRunner:
    """A small thread pool in the web process: the embedded default, no broker needed."""

    def __init__(self, app: Any, workers: int = 2) -> None:
        self.app = app
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="kalpla-job")
        self._futures: set[Future[None]] = set()
        self._lock = threading.Lock()

    def submit(self, job_id: str) -> None:
        future = self._pool.submit(self._run, job_id)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._lock:
            self._futures.discard(future)

    def _run(self, job_id: str) -> None:
        with self.app.app_context():
            self.app.extensions["kalpla"].jobs.run(job_id)

    def wait(self, timeout: float | None = 30) -> None:
        """Block until every submitted job has finished (CLI and tests)."""
        with self._lock:
            pending = set(self._futures)
        wait(pending, timeout=timeout)


class CeleryRunner:
    """Hands job ids to Celery workers started with ``kalpla worker``."""

    TASK = "kalpla.run_job"

    def __init__(self, app: Any) -> None:
        from kalpla_core.jobs.celery_app import make_celery

        self.celery = make_celery(app.extensions["kalpla"].settings.celery_broker_url)

    def submit(self, job_id: str) -> None:
        self.celery.send_task(self.TASK, args=[job_id])

    def wait(self, timeout: float | None = 30) -> None:
        """Workers run elsewhere; callers poll the job record instead."""
