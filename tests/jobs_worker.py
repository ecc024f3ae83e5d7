"""Run a Celery worker on a Kalpla app with the ``jobtest`` plugin (tests/jobs_support.py).

A worker cannot receive plugin objects through the environment, so this bootstrap builds the
app itself: ``python -m tests.jobs_worker [celery worker options]`` from the repository root,
every other setting from the ``KALPLA_*`` environment. Started by tests/test_jobs.py.
"""

from __future__ import annotations

import sys

from kalpla_core import create_app
from kalpla_core.jobs.celery_app import make_worker
from tests import jobs_support

if __name__ == "__main__":
    app = create_app({"plugins": ["jobtest"], "plugin_objects": {"jobtest": jobs_support}})
    celery = make_worker(app)
    # No remote control: it would leave pidbox keys behind on the shared test broker.
    celery.conf.worker_enable_remote_control = False
    celery.worker_main(["worker", *sys.argv[1:]])
