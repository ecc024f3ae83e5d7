"""The Celery side of the job API.

The web process only sends job ids (:func:`make_celery`, used by ``CeleryRunner``); a worker
runs them on a Kalpla app built exactly like the web's, so plugins, jobs and database are the
same (:func:`make_worker`). Start one with ``kalpla worker`` or
``celery -A kalpla_core.jobs.worker worker``, which build the app from the ``KALPLA_*``
environment; embedding code (and the tests) pass an app they built to :func:`make_worker` and
call ``worker_main(["worker", …])`` on the result.

Each task beats its job while it runs (:mod:`kalpla_core.jobs.heartbeat`). A worker reaps
once it is ready (:mod:`kalpla_core.jobs.reaper`): jobs whose worker died are
failed (or queued again), and jobs left queued (a broker that lost them, a web process that
stopped between commit and send) are sent again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from celery import Celery
from celery.signals import setup_logging, worker_process_init, worker_ready

from kalpla_core.config import ConfigError
from kalpla_core.jobs import heartbeat

if TYPE_CHECKING:
    from flask import Flask

TASK_NAME = "kalpla.run_job"

log = logging.getLogger("kalpla.jobs")


def make_celery(broker_url: str, queue: str = "kalpla") -> Celery:
    """A Celery app that sends to (and, in a worker, consumes from) ``queue``."""
    celery = Celery("kalpla", broker=broker_url, set_as_current=False)
    celery.conf.update(
        task_default_queue=queue,
        # The job record is the result: no result backend needed.
        task_ignore_result=True,
        # Acknowledge after the run, so a job whose worker died is delivered again; the
        # atomic claim in Jobs.run keeps a redelivered job from running twice.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
    )
    return celery


def make_worker(app: Flask | None = None) -> Celery:
    """The Celery app a worker runs: it executes ``kalpla.run_job`` on ``app`` (default: an app
    built from the ``KALPLA_*`` environment) and consumes the app's ``KALPLA_CELERY_QUEUE``."""
    if app is None:
        from kalpla_core.app import create_app

        app = create_app()
    kalpla = app.extensions["kalpla"]
    settings = kalpla.settings
    if not settings.celery_broker_url:
        raise ConfigError("KALPLA_CELERY_BROKER_URL must be set to run a Celery worker")
    celery = make_celery(settings.celery_broker_url, settings.celery_queue)

    # Not shared: each worker app runs jobs on its own Kalpla app (several may share a process).
    @celery.task(name=TASK_NAME, shared=False)
    def run_job(job_id: str) -> None:
        # Beats this task's job while it runs (a no-op until claimed, and after it finishes).
        with app.app_context(), heartbeat.Beat(kalpla.jobs, lambda: (job_id,)):
            kalpla.jobs.run(job_id)

    def _forked(**_kwargs: Any) -> None:
        # A forked pool process must not reuse the parent's database connections.
        kalpla.db.engine.dispose(close=False)

    def _keep_logging(**_kwargs: Any) -> None:
        # Any receiver stops Celery from reconfiguring logging: the app's JSON logs stay.
        return None

    def _ready(sender: Any = None, **_kwargs: Any) -> None:
        # The signal is process-wide: react only to this worker app's consumer.
        if getattr(sender, "app", None) is not celery:
            return
        try:
            with app.app_context():
                report = kalpla.jobs.reap()
        except Exception:
            log.exception("jobs could not be reaped at worker start-up")
            return
        log.info("reaped jobs at worker start-up: %d failed, %d queued again, %d sent again",
                 len(report.failed), len(report.requeued), len(report.dispatched))

    worker_process_init.connect(_forked, weak=False)
    worker_ready.connect(_ready, weak=False)
    setup_logging.connect(_keep_logging, weak=False)
    return celery
