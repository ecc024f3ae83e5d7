"""The Celery side of the job API. Workers build the same Kalpla app from the same
environment, so plugins, jobs and database are identical to the web process's.

Start a worker with ``kalpla worker`` (or ``celery -A kalpla_core.jobs.worker worker``).
"""

from __future__ import annotations

from typing import Any

from celery import Celery


def make_celery(broker_url: str | None) -> Celery:
    celery = Celery("kalpla", broker=broker_url)
    celery.conf.update(task_ignore_result=True, task_acks_late=True,
                       worker_prefetch_multiplier=1, broker_connection_retry_on_startup=True)
    return celery


_app: Any = None


def _kalpla_app() -> Any:
    global _app
    if _app is None:
        from kalpla_core.app import create_app

        _app = create_app()
    return _app


def make_worker() -> Celery:
    from kalpla_core.config import load_settings

    celery = make_celery(load_settings().celery_broker_url)

    @celery.task(name="kalpla.run_job")
    def run_job(job_id: str) -> None:
        app = _kalpla_app()
        with app.app_context():
            app.extensions["kalpla"].jobs.run(job_id)

    return celery

