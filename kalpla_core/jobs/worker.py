"""Celery worker entry: ``celery -A kalpla_core.jobs.worker worker``.

Importing this module builds the Kalpla app from the ``KALPLA_*`` environment (failing at once
on a bad configuration or plugin), so import it only to run a worker.
"""

from kalpla_core.jobs.celery_app import make_worker

celery = make_worker()
