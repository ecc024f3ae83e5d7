"""Celery worker entry: ``celery -A kalpla_core.jobs.worker worker`` (``kalpla worker``)."""

from kalpla_core.jobs.celery_app import make_worker

celery = make_worker()
