"""``jobtest``: a plugin with background jobs and a route that enqueues one, for the job tests.

Loaded through ``make_app(plugins=["jobtest"], plugin_objects={"jobtest": jobs_support})``
in the test process, and by ``jobs_worker.py`` in a Celery worker process (tests/jobs_worker.py).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any

from flask.views import MethodView
from marshmallow import Schema, fields, validate

from kalpla_core.hookspecs import PluginMeta, hookimpl
from kalpla_core.jobs.schemas import JobSchema
from kalpla_core.toolkit import (
    APIError,
    Blueprint,
    JobContext,
    JobError,
    JobSpec,
    current_institution,
    current_user,
    enqueue_job,
)

KALPLA_PLUGIN = PluginMeta(name="jobtest", version="1.0", core_requires=">=0.1")

# Tags of the count jobs this process ran, in order.
RUNS: list[str] = []


@dataclass
class Pause:
    """Holds a running count job after its first step until the test resumes it."""

    reached: threading.Event = field(default_factory=threading.Event)
    resume: threading.Event = field(default_factory=threading.Event)


PAUSES: dict[str, Pause] = {}


def pause(name: str) -> Pause:
    PAUSES[name] = Pause()
    return PAUSES[name]


def count(ctx: JobContext, upto: int, tag: str = "", pause: str | None = None) -> dict[str, Any]:
    """Add up 1..upto, reporting progress after each step."""
    RUNS.append(tag)
    total = 0
    for i in range(1, upto + 1):
        total += i
        ctx.progress(i * 100 // upto, f"counted {i} of {upto}")
        if pause is not None and i == 1:
            held = PAUSES[pause]
            held.reached.set()
            if not held.resume.wait(timeout=15):
                raise JobError("nobody resumed the job")
    return {"total": total, "pid": os.getpid(), "owner_id": ctx.owner_id,
            "institution_id": ctx.institution_id}


def refuse(ctx: JobContext, reason: str) -> None:
    raise JobError(reason)


def crash(ctx: JobContext) -> None:
    raise RuntimeError("connection to db-internal.example:5432 refused (password hunter2)")


@hookimpl
def kalpla_jobs() -> dict[str, Any]:
    return {"jobtest.count": count, "jobtest.refuse": refuse, "jobtest.crash": crash,
            # The same count, declared retry-safe / with a one-minute timeout (test_jobs_reaper).
            "jobtest.recount": JobSpec(count, retry_safe=True),
            "jobtest.quick": JobSpec(count, timeout=60)}


blp = Blueprint("jobtest", __name__, description="Job test plugin.")


class CountRequest(Schema):
    upto = fields.Integer(required=True, validate=validate.Range(1, 1000))
    tag = fields.String(load_default="")
    # Enqueue, then fail the request: its transaction rolls back and the job must not run.
    fail_after = fields.Boolean(load_default=False)


@blp.route("/counts")
class Counts(MethodView):
    @blp.arguments(CountRequest)
    @blp.response(202, JobSchema)
    def post(self, data: dict[str, Any]) -> Any:
        current_user()
        job = enqueue_job("jobtest.count", {"upto": data["upto"], "tag": data["tag"]},
                          institution_id=current_institution().id)
        if data["fail_after"]:
            raise APIError(409, "Refused after enqueueing.", "refused")
        return job


@hookimpl
def kalpla_blueprints() -> list[Any]:
    return [blp]
